#include "guest/client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "base/status.h"
#include "base/status_macros.h"
#include "guest/frame.h"

namespace sbx::agent {
namespace {

absl::StatusOr<UniqueFd> ConnectUnix(const std::string& path) {
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError("unix socket path too long or empty: " +
                                      path);
  }
  memcpy(addr.sun_path, path.data(), path.size());
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoStatus("socket", errno);
  while (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr),
                 sizeof(addr)) != 0) {
    if (errno == EINTR) continue;
    int err = errno;
    absl::Status status = ErrnoStatus("connect", path, err);
    if (err == ENOENT || err == ECONNREFUSED) {
      return absl::UnavailableError(status.message());
    }
    return status;
  }
  return fd;
}

class UnixDialer final : public Dialer {
 public:
  explicit UnixDialer(std::string path) : path_(std::move(path)) {}
  absl::StatusOr<UniqueFd> Dial() override { return ConnectUnix(path_); }

 private:
  std::string path_;
};

class VsockDialer final : public Dialer {
 public:
  static constexpr int kHandshakeSeconds = 10;

  VsockDialer(std::string uds_path, uint32_t port)
      : uds_path_(std::move(uds_path)), port_(port) {}

  absl::StatusOr<UniqueFd> Dial() override {
    SBX_ASSIGN_OR_RETURN(UniqueFd fd, ConnectUnix(uds_path_));
    // The handshake has a deadline of its own: a VM that never answers
    // (not booted yet, or wedged) must not block the caller forever.
    timeval timeout = {.tv_sec = kHandshakeSeconds, .tv_usec = 0};
    setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    std::string line = "CONNECT " + std::to_string(port_) + "\n";
    if (send(fd.get(), line.data(), line.size(), MSG_NOSIGNAL) !=
        static_cast<ssize_t>(line.size())) {
      return ErrnoStatus("send CONNECT", uds_path_, errno);
    }
    // The answer is one short line; read it byte by byte so nothing of the
    // agent's first frame is consumed with it.
    std::string answer;
    while (answer.size() < 64) {
      char c;
      ssize_t n = read(fd.get(), &c, 1);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        return absl::DeadlineExceededError(
            "vsock CONNECT " + std::to_string(port_) + ": no answer within " +
            std::to_string(kHandshakeSeconds) + " s");
      }
      if (n <= 0) {
        return absl::UnavailableError(
            "vsock: no guest listener on port " + std::to_string(port_) +
            " (connection closed during CONNECT)");
      }
      if (c == '\n') break;
      answer += c;
    }
    if (answer.rfind("OK ", 0) != 0) {
      return absl::UnavailableError("vsock CONNECT " + std::to_string(port_) +
                                    ": unexpected answer \"" + answer + "\"");
    }
    timeout = {};
    setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    return fd;
  }

 private:
  std::string uds_path_;
  uint32_t port_;
};

absl::Status ExpectDone(int fd) {
  SBX_ASSIGN_OR_RETURN(Response response, ReadResponse(fd));
  if (!response.has_done()) {
    return absl::InternalError("agent sent an unexpected response");
  }
  return absl::OkStatus();
}

}  // namespace

std::unique_ptr<Dialer> NewUnixDialer(std::string path) {
  return std::make_unique<UnixDialer>(std::move(path));
}

std::unique_ptr<Dialer> NewVsockDialer(std::string uds_path, uint32_t port) {
  return std::make_unique<VsockDialer>(std::move(uds_path), port);
}

absl::StatusOr<Response> ReadResponse(int fd) {
  Response response;
  SBX_ASSIGN_OR_RETURN(bool got, ReadFrame(fd, response));
  if (!got) {
    return absl::UnavailableError("agent closed the connection");
  }
  if (response.has_error()) {
    return absl::Status(static_cast<absl::StatusCode>(response.error().code()),
                        response.error().message());
  }
  return response;
}

void ExecStream::Abort() {
  if (fd_.valid()) ::shutdown(fd_.get(), SHUT_RDWR);
}

absl::StatusOr<ExecStream::Event> ExecStream::Next() {
  if (!fd_) return absl::FailedPreconditionError("stream is closed");
  SBX_ASSIGN_OR_RETURN(Response response, ReadResponse(fd_.get()));
  Event event;
  if (response.has_output()) {
    event.kind = response.output().stream() == Output::STDERR
                     ? Event::Kind::kStderr
                     : Event::Kind::kStdout;
    event.data = std::move(*response.mutable_output()->mutable_data());
    event.dropped_before = response.output().dropped_before();
  } else if (response.has_exited()) {
    event.kind = Event::Kind::kExited;
    event.exited = response.exited();
  } else {
    return absl::InternalError("agent sent an unexpected frame during exec");
  }
  return event;
}

absl::Status ExecStream::WriteStdin(std::string_view data) {
  if (!fd_) return absl::FailedPreconditionError("stream is closed");
  while (!data.empty()) {
    size_t n = std::min(data.size(), kMaxChunkBytes);
    Request request;
    request.mutable_input()->set_data(data.data(), n);
    SBX_RETURN_IF_ERROR(WriteFrame(fd_.get(), request));
    data.remove_prefix(n);
  }
  return absl::OkStatus();
}

absl::Status ExecStream::CloseStdin() {
  if (!fd_) return absl::FailedPreconditionError("stream is closed");
  Request request;
  request.mutable_input()->set_close(true);
  return WriteFrame(fd_.get(), request);
}

absl::Status ExecStream::Signal(int signal) {
  if (!fd_) return absl::FailedPreconditionError("stream is closed");
  Request request;
  request.mutable_signal()->set_signal(signal);
  return WriteFrame(fd_.get(), request);
}

absl::StatusOr<UniqueFd> Client::Open(const Request& request) {
  SBX_ASSIGN_OR_RETURN(UniqueFd fd, dialer_->Dial());
  SBX_RETURN_IF_ERROR(WriteFrame(fd.get(), request));
  return fd;
}

absl::StatusOr<Pong> Client::Ping() {
  Request request;
  request.mutable_ping();
  SBX_ASSIGN_OR_RETURN(UniqueFd fd, Open(request));
  SBX_ASSIGN_OR_RETURN(Response response, ReadResponse(fd.get()));
  if (!response.has_pong()) return absl::InternalError("expected a pong");
  return response.pong();
}

absl::StatusOr<std::unique_ptr<ExecStream>> Client::OpenStream(
    const Request& request) {
  SBX_ASSIGN_OR_RETURN(UniqueFd fd, Open(request));
  if (request.has_attach()) {
    return std::unique_ptr<ExecStream>(new ExecStream(
        std::move(fd), request.attach().process_id(), /*pid=*/0));
  }
  SBX_ASSIGN_OR_RETURN(Response response, ReadResponse(fd.get()));
  if (!response.has_started()) {
    return absl::InternalError("expected the process to start");
  }
  return std::unique_ptr<ExecStream>(new ExecStream(
      std::move(fd), response.started().process_id(), response.started().pid()));
}

absl::StatusOr<std::unique_ptr<ExecStream>> Client::Start(const Exec& exec) {
  Request request;
  *request.mutable_exec() = exec;
  return OpenStream(request);
}

absl::StatusOr<std::unique_ptr<ExecStream>> Client::Attach(
    uint64_t process_id) {
  Request request;
  request.mutable_attach()->set_process_id(process_id);
  return OpenStream(request);
}

absl::StatusOr<ExecResult> Client::Run(const Exec& exec) {
  SBX_ASSIGN_OR_RETURN(std::unique_ptr<ExecStream> stream, Start(exec));
  ExecResult result;
  while (true) {
    SBX_ASSIGN_OR_RETURN(ExecStream::Event event, stream->Next());
    switch (event.kind) {
      case ExecStream::Event::Kind::kStdout:
        result.stdout_data += event.data;
        break;
      case ExecStream::Event::Kind::kStderr:
        result.stderr_data += event.data;
        break;
      case ExecStream::Event::Kind::kExited:
        result.exited = std::move(event.exited);
        return result;
    }
  }
}

absl::StatusOr<ExecResult> Client::Run(std::vector<std::string> argv) {
  Exec exec;
  for (std::string& arg : argv) exec.add_argv(std::move(arg));
  exec.set_close_stdin(true);
  return Run(exec);
}

absl::StatusOr<std::vector<ProcessList::Process>> Client::ListProcesses() {
  Request request;
  request.mutable_list_processes();
  SBX_ASSIGN_OR_RETURN(UniqueFd fd, Open(request));
  SBX_ASSIGN_OR_RETURN(Response response, ReadResponse(fd.get()));
  if (!response.has_processes()) {
    return absl::InternalError("expected a process list");
  }
  return std::vector<ProcessList::Process>(
      response.processes().processes().begin(),
      response.processes().processes().end());
}

absl::Status Client::Signal(uint64_t process_id, int signal) {
  Request request;
  request.mutable_signal()->set_process_id(process_id);
  request.mutable_signal()->set_signal(signal);
  SBX_ASSIGN_OR_RETURN(UniqueFd fd, Open(request));
  return ExpectDone(fd.get());
}

absl::StatusOr<FileInfo> Client::ReadFile(
    const agent::ReadFile& read,
    const std::function<absl::Status(std::string_view)>& sink) {
  Request request;
  *request.mutable_read_file() = read;
  SBX_ASSIGN_OR_RETURN(UniqueFd fd, Open(request));
  SBX_ASSIGN_OR_RETURN(Response header, ReadResponse(fd.get()));
  if (!header.has_file_info()) return absl::InternalError("expected file info");
  while (true) {
    SBX_ASSIGN_OR_RETURN(Response response, ReadResponse(fd.get()));
    if (!response.has_chunk()) return absl::InternalError("expected a chunk");
    SBX_RETURN_IF_ERROR(sink(response.chunk().data()));
    if (response.chunk().eof()) return header.file_info();
  }
}

absl::StatusOr<std::string> Client::ReadFileToString(const std::string& path) {
  agent::ReadFile request;
  request.set_path(path);
  std::string data;
  SBX_RETURN_IF_ERROR(ReadFile(request, [&](std::string_view chunk) {
                        data += chunk;
                        return absl::OkStatus();
                      }).status());
  return data;
}

absl::StatusOr<uint64_t> Client::WriteFile(
    const agent::WriteFile& write,
    const std::function<absl::StatusOr<size_t>(char*, size_t)>& source) {
  Request request;
  *request.mutable_write_file() = write;
  SBX_ASSIGN_OR_RETURN(UniqueFd fd, Open(request));
  std::string buffer(kMaxChunkBytes, '\0');
  absl::Status sent;
  while (true) {
    SBX_ASSIGN_OR_RETURN(size_t n, source(buffer.data(), buffer.size()));
    Request chunk;
    chunk.mutable_chunk()->set_data(buffer.data(), std::min(n, buffer.size()));
    chunk.mutable_chunk()->set_eof(n == 0);
    sent = WriteFrame(fd.get(), chunk);
    // The agent stops reading when it fails (e.g. ENOSPC) and says why:
    // read that rather than report the broken pipe.
    if (!sent.ok() || n == 0) break;
  }
  absl::StatusOr<Response> response = ReadResponse(fd.get());
  if (!response.ok()) return response.status();
  if (!response->has_done()) return absl::InternalError("expected done");
  return response->done().bytes();
}

absl::Status Client::WriteFileFromString(const std::string& path,
                                         std::string_view data,
                                         uint32_t mode) {
  agent::WriteFile request;
  request.set_path(path);
  request.set_mode(mode);
  size_t offset = 0;
  return WriteFile(request,
                   [&](char* buffer, size_t size) -> absl::StatusOr<size_t> {
                     size_t n = std::min(size, data.size() - offset);
                     memcpy(buffer, data.data() + offset, n);
                     offset += n;
                     return n;
                   })
      .status();
}

absl::StatusOr<FileInfo> Client::Stat(const std::string& path) {
  Request request;
  request.mutable_stat()->set_path(path);
  SBX_ASSIGN_OR_RETURN(UniqueFd fd, Open(request));
  SBX_ASSIGN_OR_RETURN(Response response, ReadResponse(fd.get()));
  if (!response.has_file_info()) return absl::InternalError("expected info");
  return response.file_info();
}

absl::StatusOr<std::vector<FileInfo>> Client::ListDir(const std::string& path) {
  Request request;
  request.mutable_list_dir()->set_path(path);
  SBX_ASSIGN_OR_RETURN(UniqueFd fd, Open(request));
  std::vector<FileInfo> entries;
  while (true) {
    SBX_ASSIGN_OR_RETURN(Response response, ReadResponse(fd.get()));
    if (response.has_done()) return entries;
    if (!response.has_dir_entries()) {
      return absl::InternalError("expected directory entries");
    }
    for (FileInfo& entry : *response.mutable_dir_entries()->mutable_entries()) {
      entries.push_back(std::move(entry));
    }
  }
}

absl::Status Client::Remove(const std::string& path, bool recursive) {
  Request request;
  request.mutable_remove()->set_path(path);
  request.mutable_remove()->set_recursive(recursive);
  SBX_ASSIGN_OR_RETURN(UniqueFd fd, Open(request));
  return ExpectDone(fd.get());
}

absl::Status Client::Rename(const std::string& from, const std::string& to) {
  Request request;
  request.mutable_rename()->set_from(from);
  request.mutable_rename()->set_to(to);
  SBX_ASSIGN_OR_RETURN(UniqueFd fd, Open(request));
  return ExpectDone(fd.get());
}

absl::Status Client::MakeDir(const std::string& path, uint32_t mode,
                             bool parents) {
  Request request;
  request.mutable_make_dir()->set_path(path);
  request.mutable_make_dir()->set_mode(mode);
  request.mutable_make_dir()->set_parents(parents);
  SBX_ASSIGN_OR_RETURN(UniqueFd fd, Open(request));
  return ExpectDone(fd.get());
}

absl::Status Client::Sync() {
  Request request;
  request.mutable_sync();
  SBX_ASSIGN_OR_RETURN(UniqueFd fd, Open(request));
  return ExpectDone(fd.get());
}

absl::Status Client::AfterRestore(std::string_view entropy,
                                  int64_t unix_time_ns) {
  Request request;
  request.mutable_after_restore()->set_entropy(entropy.data(), entropy.size());
  request.mutable_after_restore()->set_unix_time_ns(unix_time_ns);
  SBX_ASSIGN_OR_RETURN(UniqueFd fd, Open(request));
  return ExpectDone(fd.get());
}

absl::Status Client::AttachDisk(const std::string& device) {
  Request request;
  request.mutable_attach_disk()->set_device(device);
  SBX_ASSIGN_OR_RETURN(UniqueFd fd, Open(request));
  return ExpectDone(fd.get());
}

absl::Status Client::Shutdown() {
  Request request;
  request.mutable_shutdown();
  SBX_ASSIGN_OR_RETURN(UniqueFd fd, Open(request));
  return ExpectDone(fd.get());
}

}  // namespace sbx::agent
