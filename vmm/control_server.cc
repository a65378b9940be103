#include "vmm/control_server.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <future>
#include <optional>

#include "absl/strings/str_cat.h"
#include "base/logging.h"
#include "base/status.h"
#include "base/status_macros.h"
#include "guest/frame.h"
#include "vmm/machine.h"

namespace sbx::vmm {
namespace {

namespace control = ::sbx::control::v1;

void SetIoTimeouts(int fd) {
  timeval tv = {.tv_sec = ControlServer::kIoTimeoutMs / 1000,
                .tv_usec = (ControlServer::kIoTimeoutMs % 1000) * 1000};
  (void)::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  (void)::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

}  // namespace

absl::StatusOr<std::unique_ptr<ControlServer>> ControlServer::Create(
    const std::string& path, Handler handler, seccomp::Options seccomp) {
  // The filter first: nothing to undo if it cannot be built.
  std::optional<seccomp::Filter> filter;
  if (seccomp.mode != seccomp::Mode::kOff) {
    absl::StatusOr<seccomp::Filter> built =
        seccomp::Filter::Build(seccomp::Role::kControl, seccomp.mode, {});
    if (!built.ok()) return built.status();
    filter = *std::move(built);
    seccomp::PrepareProcess();
  }
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--control ", path, ": must be 1 to ", sizeof(addr.sun_path) - 1,
        " bytes"));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--control ", path, ": exists and is not a socket"));
    }
    ::unlink(path.c_str());  // a stale socket of an earlier run
  }
  UniqueFd listen_fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listen_fd.valid()) return ErrnoStatus("socket", path, errno);
  // Linux creates the socket file with the socket inode's mode less the
  // umask: 0600 from the first moment, no window for another user to
  // connect. The chmod after bind covers other kernels.
  (void)::fchmod(listen_fd.get(), 0600);
  if (::bind(listen_fd.get(), reinterpret_cast<sockaddr*>(&addr),
             sizeof(addr)) != 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR || err == EACCES || err == EADDRINUSE) {
      return absl::InvalidArgumentError(
          absl::StrCat("--control ", path, ": ", std::strerror(err)));
    }
    return ErrnoStatus("bind", path, err);
  }
  if (::chmod(path.c_str(), 0600) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    return ErrnoStatus("chmod", path, err);
  }
  if (::listen(listen_fd.get(), 16) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    return ErrnoStatus("listen", path, err);
  }
  absl::StatusOr<EventFd> stop = EventFd::Create();
  if (!stop.ok()) {
    ::unlink(path.c_str());
    return stop.status();
  }
  std::unique_ptr<ControlServer> server(new ControlServer(
      path, std::move(handler), std::move(listen_fd), *std::move(stop)));
  if (!filter.has_value()) {
    server->thread_ = std::thread([s = server.get()] { s->Serve(); });
    return server;
  }
  // Filtered before it serves the first client: Create waits for it.
  std::promise<absl::Status> installed;
  std::future<absl::Status> result = installed.get_future();
  const bool hook = seccomp.test_violation == seccomp::Role::kControl;
  server->thread_ = std::thread(
      [s = server.get(), f = &*filter, installed = std::move(installed), hook]() mutable {
        absl::Status status = f->Install();
        const bool ok = status.ok();
        installed.set_value(std::move(status));  // *f may be gone after this
        if (!ok) return;
        if (hook) seccomp::MakeForbiddenSyscall();
        s->Serve();
      });
  if (absl::Status s = result.get(); !s.ok()) return s;  // ~ControlServer cleans up
  return server;
}

ControlServer::~ControlServer() {
  (void)stop_.Signal();
  if (thread_.joinable()) thread_.join();
  ::unlink(path_.c_str());
}

void ControlServer::Serve() {
  for (;;) {
    pollfd fds[2] = {{.fd = listen_.get(), .events = POLLIN, .revents = 0},
                     {.fd = stop_.fd(), .events = POLLIN, .revents = 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      SBX_LOG(ERROR) << "control socket " << path_ << ": poll: "
                     << std::strerror(errno);
      return;
    }
    if (fds[1].revents != 0) return;
    if (fds[0].revents == 0) continue;
    UniqueFd client(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!client.valid()) {
      // The peer may have given up already (ECONNABORTED), or descriptors
      // ran out: try again at the next connection.
      SBX_LOG_EVERY_N_SEC(WARNING, 5)
          << "control socket " << path_ << ": accept: " << std::strerror(errno);
      continue;
    }
    SetIoTimeouts(client.get());
    ServeClient(client.get());
  }
}

void ControlServer::ServeClient(int fd) {
  for (;;) {
    // Wait for the next request without a timeout (a client may hold the
    // connection idle), but give way to Stop.
    pollfd fds[2] = {{.fd = fd, .events = POLLIN, .revents = 0},
                     {.fd = stop_.fd(), .events = POLLIN, .revents = 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    control::Request request;
    absl::StatusOr<bool> got = agent::ReadFrame(fd, request);
    if (!got.ok()) {
      SBX_LOG_EVERY_N_SEC(WARNING, 5)
          << "control socket " << path_ << ": dropping a client: "
          << got.status().message();
      return;
    }
    if (!*got) return;  // the client closed the connection
    control::Response response;
    if (request.request_case() == control::Request::REQUEST_NOT_SET) {
      response.set_code(static_cast<int32_t>(absl::StatusCode::kInvalidArgument));
      response.set_message("empty request: set one of pause, resume, snapshot, "
                           "shutdown, stats");
    } else {
      response = handler_(request);
    }
    absl::Status sent = agent::WriteFrame(fd, response);
    if (!sent.ok()) {
      SBX_LOG_EVERY_N_SEC(WARNING, 5)
          << "control socket " << path_ << ": " << sent.message();
      return;
    }
  }
}

ControlServer::Handler MachineControlHandler(Machine& machine) {
  return [&machine](const control::Request& request) {
    control::Response response;
    absl::Status status;
    switch (request.request_case()) {
      case control::Request::kPause:
        status = machine.Pause();
        break;
      case control::Request::kResume:
        status = machine.Resume();
        break;
      case control::Request::kSnapshot: {
        const control::SnapshotRequest& r = request.snapshot();
        if (r.kind() != control::FULL && r.kind() != control::DIFF) {
          status = absl::InvalidArgumentError("Snapshot: kind must be FULL or DIFF");
          break;
        }
        if (r.kind() == control::FULL && !r.base_dir().empty()) {
          status = absl::InvalidArgumentError("Snapshot: base_dir is for DIFF only");
          break;
        }
        absl::StatusOr<SnapshotResult> result = machine.TakeSnapshot(
            r.dir(), r.kind() == control::FULL ? SnapshotKind::kFull : SnapshotKind::kDiff,
            r.base_dir());
        status = result.status();
        if (result.ok()) {
          response.mutable_snapshot()->set_memory_data_bytes(result->memory_data_bytes);
          response.mutable_snapshot()->set_memory_pages(result->memory_pages);
        }
        break;
      }
      case control::Request::kShutdown:
        machine.Shutdown();
        break;
      case control::Request::kStats: {
        MachineStats stats = machine.Stats();
        control::Stats* out = response.mutable_stats();
        out->set_state(stats.state == MachineState::kRunning  ? control::RUNNING
                       : stats.state == MachineState::kPaused ? control::PAUSED
                                                              : control::STOPPED);
        out->set_vmm_rss_bytes(stats.vmm_rss_bytes);
        out->set_guest_memory_bytes(stats.guest_memory_bytes);
        out->set_dirty_tracking(stats.dirty_tracking);
        out->set_dirty_pages(stats.dirty_pages);
        out->set_dirty_base_dir(stats.dirty_base_dir);
        out->set_exits_io(stats.exits_io);
        out->set_exits_mmio(stats.exits_mmio);
        out->set_exits_other(stats.exits_other);
        break;
      }
      case control::Request::REQUEST_NOT_SET:
        status = absl::InvalidArgumentError("empty request");
        break;
    }
    response.set_code(static_cast<int32_t>(status.code()));
    response.set_message(std::string(status.message()));
    return response;
  };
}

}  // namespace sbx::vmm
