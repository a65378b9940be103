#include "guest/agent.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/random.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/logging.h"
#include "base/status.h"
#include "base/status_macros.h"
#include "guest/frame.h"

namespace sbx::agent {
namespace {

absl::Status SendError(int fd, const absl::Status& status) {
  Response response;
  response.mutable_error()->set_code(static_cast<int32_t>(status.code()));
  response.mutable_error()->set_message(std::string(status.message()));
  return WriteFrame(fd, response);
}

absl::Status SendDone(int fd, uint64_t bytes = 0) {
  Response response;
  response.mutable_done()->set_bytes(bytes);
  return WriteFrame(fd, response);
}

// Paths from the host must be absolute and free of NUL bytes.
absl::Status CheckPath(const std::string& path) {
  if (path.empty() || path[0] != '/') {
    return absl::InvalidArgumentError("path must be absolute: \"" + path +
                                      "\"");
  }
  if (path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("path contains a NUL byte");
  }
  if (path.size() > PATH_MAX) {
    return absl::InvalidArgumentError("path longer than PATH_MAX");
  }
  return absl::OkStatus();
}

void FillFileInfo(const std::string& path, const std::string& name,
                  const struct stat& st, FileInfo& info) {
  info.set_name(name);
  if (S_ISREG(st.st_mode)) {
    info.set_type(FileInfo::FILE);
  } else if (S_ISDIR(st.st_mode)) {
    info.set_type(FileInfo::DIRECTORY);
  } else if (S_ISLNK(st.st_mode)) {
    info.set_type(FileInfo::SYMLINK);
    char target[PATH_MAX];
    ssize_t n = readlink(path.c_str(), target, sizeof(target));
    if (n > 0) info.set_symlink_target(std::string(target, n));
  } else {
    info.set_type(FileInfo::OTHER);
  }
  info.set_size(static_cast<uint64_t>(st.st_size));
  info.set_mode(st.st_mode & 07777);
  info.set_uid(st.st_uid);
  info.set_gid(st.st_gid);
  info.set_mtime_ns(int64_t{st.st_mtim.tv_sec} * 1'000'000'000 +
                    st.st_mtim.tv_nsec);
}

std::string BaseName(const std::string& path) {
  size_t slash = path.find_last_of('/');
  std::string name = path.substr(slash + 1);
  return name.empty() ? "/" : name;
}

std::string DirName(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == 0 ? "/" : path.substr(0, slash);
}

absl::Status MakeDirs(const std::string& path, mode_t mode) {
  struct stat st;
  if (stat(path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) return absl::OkStatus();
    return absl::FailedPreconditionError(path + " exists and is not a directory");
  }
  if (path != "/") SBX_RETURN_IF_ERROR(MakeDirs(DirName(path), mode));
  if (mkdir(path.c_str(), mode) != 0 && errno != EEXIST) {
    return ErrnoStatus("mkdir", path, errno);
  }
  return absl::OkStatus();
}

absl::Status HandleReadFile(int fd, const ReadFile& request) {
  SBX_RETURN_IF_ERROR(CheckPath(request.path()));
  UniqueFd file(open(request.path().c_str(), O_RDONLY | O_CLOEXEC));
  if (!file) return ErrnoStatus("open", request.path(), errno);
  struct stat st;
  if (fstat(file.get(), &st) != 0) return ErrnoStatus("fstat", errno);
  if (S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(request.path() +
                                         " is a directory");
  }
  Response response;
  FillFileInfo(request.path(), BaseName(request.path()), st,
               *response.mutable_file_info());
  SBX_RETURN_IF_ERROR(WriteFrame(fd, response));
  uint64_t offset = request.offset();
  uint64_t left = request.length() == 0 ? UINT64_MAX : request.length();
  std::string buffer(kMaxChunkBytes, '\0');
  while (true) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(left, buffer.size()));
    ssize_t n = want == 0 ? 0
                          : pread(file.get(), buffer.data(), want,
                                  static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("read", request.path(), errno);
    }
    offset += static_cast<uint64_t>(n);
    left -= static_cast<uint64_t>(n);
    Response chunk;
    chunk.mutable_chunk()->set_data(buffer.data(), static_cast<size_t>(n));
    chunk.mutable_chunk()->set_eof(n == 0 || left == 0);
    SBX_RETURN_IF_ERROR(WriteFrame(fd, chunk));
    if (n == 0 || left == 0) return absl::OkStatus();
  }
}

absl::Status WriteAllTo(int fd, const std::string& data,
                        const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("write", path, errno);
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// Receives Chunk frames into `file` up to the one with eof.
absl::StatusOr<uint64_t> ReceiveChunks(int conn, int file,
                                       const std::string& path) {
  uint64_t total = 0;
  while (true) {
    Request request;
    SBX_ASSIGN_OR_RETURN(bool got, ReadFrame(conn, request));
    if (!got) {
      return absl::DataLossError("connection closed before the end of " +
                                 path);
    }
    if (!request.has_chunk()) {
      return absl::InvalidArgumentError("expected a file chunk");
    }
    SBX_RETURN_IF_ERROR(WriteAllTo(file, request.chunk().data(), path));
    total += request.chunk().data().size();
    if (request.chunk().eof()) return total;
  }
}

absl::Status HandleWriteFile(int fd, const WriteFile& request) {
  const std::string& path = request.path();
  SBX_RETURN_IF_ERROR(CheckPath(path));
  if (path.back() == '/') {
    return absl::InvalidArgumentError("path names a directory: " + path);
  }
  mode_t mode = request.mode() == 0 ? 0644 : (request.mode() & 07777);
  std::string dir = DirName(path);
  if (request.make_parents()) SBX_RETURN_IF_ERROR(MakeDirs(dir, 0755));
  if (request.append()) {
    UniqueFd file(open(path.c_str(),
                       O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, mode));
    if (!file) return ErrnoStatus("open", path, errno);
    SBX_ASSIGN_OR_RETURN(uint64_t total, ReceiveChunks(fd, file.get(), path));
    return SendDone(fd, total);
  }
  // Into a temporary file beside the target, renamed over it at the end:
  // a transfer that breaks off leaves the old file untouched.
  std::random_device random;
  std::string temp = dir + (dir == "/" ? "" : "/") + "." + BaseName(path) +
                     ".sbx-" + std::to_string(random());
  UniqueFd file(open(temp.c_str(),
                     O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
  if (!file) return ErrnoStatus("open", temp, errno);
  absl::StatusOr<uint64_t> total = ReceiveChunks(fd, file.get(), path);
  absl::Status status = total.status();
  if (status.ok() && fchmod(file.get(), mode) != 0) {
    status = ErrnoStatus("fchmod", temp, errno);
  }
  if (status.ok() && close(file.release()) != 0) {
    status = ErrnoStatus("close", temp, errno);
  }
  if (status.ok() && rename(temp.c_str(), path.c_str()) != 0) {
    status = ErrnoStatus("rename", path, errno);
  }
  if (!status.ok()) {
    unlink(temp.c_str());
    return status;
  }
  return SendDone(fd, *total);
}

absl::Status HandleListDir(int fd, const ListDir& request) {
  SBX_RETURN_IF_ERROR(CheckPath(request.path()));
  DIR* dir = opendir(request.path().c_str());
  if (dir == nullptr) return ErrnoStatus("opendir", request.path(), errno);
  std::vector<std::string> names;
  while (dirent* entry = readdir(dir)) {
    std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(std::move(name));
  }
  closedir(dir);
  std::sort(names.begin(), names.end());
  std::string prefix = request.path();
  if (prefix.back() != '/') prefix += '/';
  Response response;
  for (const std::string& name : names) {
    struct stat st;
    std::string path = prefix + name;
    if (lstat(path.c_str(), &st) != 0) continue;  // removed meanwhile
    FillFileInfo(path, name, st,
                 *response.mutable_dir_entries()->add_entries());
    if (response.dir_entries().entries_size() == 1024) {
      SBX_RETURN_IF_ERROR(WriteFrame(fd, response));
      response.Clear();
    }
  }
  if (response.has_dir_entries()) {
    SBX_RETURN_IF_ERROR(WriteFrame(fd, response));
  }
  return SendDone(fd);
}

absl::Status HandleStat(int fd, const Stat& request) {
  SBX_RETURN_IF_ERROR(CheckPath(request.path()));
  struct stat st;
  if (lstat(request.path().c_str(), &st) != 0) {
    return ErrnoStatus("stat", request.path(), errno);
  }
  Response response;
  FillFileInfo(request.path(), BaseName(request.path()), st,
               *response.mutable_file_info());
  return WriteFrame(fd, response);
}

int RemoveEntry(const char* path, const struct stat*, int type, FTW*) {
  return (type == FTW_DP ? rmdir(path) : unlink(path)) == 0 ? 0 : errno;
}

absl::Status HandleRemove(int fd, const Remove& request) {
  const std::string& path = request.path();
  SBX_RETURN_IF_ERROR(CheckPath(path));
  if (path.find_first_not_of('/') == std::string::npos) {
    return absl::InvalidArgumentError("refusing to remove /");
  }
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return ErrnoStatus("remove", path, errno);
  if (S_ISDIR(st.st_mode) && request.recursive()) {
    int err = nftw(path.c_str(), RemoveEntry, 64, FTW_DEPTH | FTW_PHYS);
    if (err != 0) return ErrnoStatus("remove", path, err > 0 ? err : errno);
  } else if (remove(path.c_str()) != 0) {
    return ErrnoStatus("remove", path, errno);
  }
  return SendDone(fd);
}

absl::Status HandleRename(int fd, const Rename& request) {
  SBX_RETURN_IF_ERROR(CheckPath(request.from()));
  SBX_RETURN_IF_ERROR(CheckPath(request.to()));
  if (rename(request.from().c_str(), request.to().c_str()) != 0) {
    return ErrnoStatus("rename", request.from() + " -> " + request.to(),
                       errno);
  }
  return SendDone(fd);
}

absl::Status HandleMakeDir(int fd, const MakeDir& request) {
  SBX_RETURN_IF_ERROR(CheckPath(request.path()));
  mode_t mode = request.mode() == 0 ? 0755 : (request.mode() & 07777);
  if (request.parents()) {
    SBX_RETURN_IF_ERROR(MakeDirs(request.path(), mode));
  } else if (mkdir(request.path().c_str(), mode) != 0) {
    return ErrnoStatus("mkdir", request.path(), errno);
  }
  return SendDone(fd);
}

void FillExited(const ExitInfo& exit, Exited& exited) {
  if (exit.signaled) {
    exited.set_signal(exit.code);
  } else {
    exited.set_exit_code(exit.code);
  }
  exited.set_timed_out(exit.timed_out);
}

class GuestSystem final : public System {
 public:
  absl::Status AddEntropy(std::string_view bytes) override {
    UniqueFd random(open("/dev/urandom", O_WRONLY | O_CLOEXEC));
    if (!random) return ErrnoStatus("open", "/dev/urandom", errno);
    std::string buffer(sizeof(rand_pool_info) + bytes.size(), '\0');
    auto* info = reinterpret_cast<rand_pool_info*>(buffer.data());
    info->entropy_count = static_cast<int>(bytes.size() * 8);
    info->buf_size = static_cast<int>(bytes.size());
    memcpy(buffer.data() + sizeof(rand_pool_info), bytes.data(), bytes.size());
    if (ioctl(random.get(), RNDADDENTROPY, info) != 0) {
      return ErrnoStatus("RNDADDENTROPY", errno);
    }
    // Credited entropy alone waits for the next scheduled reseed; clones
    // of one snapshot would draw the same bytes until then. Reseed now.
    if (ioctl(random.get(), RNDRESEEDCRNG) != 0) {
      return ErrnoStatus("RNDRESEEDCRNG", errno);
    }
    return absl::OkStatus();
  }
  absl::Status SetClock(int64_t unix_time_ns) override {
    timespec ts = {.tv_sec = unix_time_ns / 1'000'000'000,
                   .tv_nsec = unix_time_ns % 1'000'000'000};
    if (clock_settime(CLOCK_REALTIME, &ts) != 0) {
      return ErrnoStatus("clock_settime", errno);
    }
    return absl::OkStatus();
  }
  absl::Status Sync() override {
    sync();
    return absl::OkStatus();
  }
  absl::Status Reboot() override {
    sync();
    reboot(RB_AUTOBOOT);
    return ErrnoStatus("reboot", errno);
  }
  absl::Status AttachDisk(const std::string& device,
                          const ProgramRunner& run) override {
    return AttachUpperDisk(device, run);
  }
};

class HostSystem final : public System {
 public:
  absl::Status AddEntropy(std::string_view) override { return NotInGuest(); }
  absl::Status SetClock(int64_t) override { return NotInGuest(); }
  absl::Status Sync() override {
    sync();
    return absl::OkStatus();
  }
  absl::Status Reboot() override { return NotInGuest(); }
  absl::Status AttachDisk(const std::string&, const ProgramRunner&) override {
    return NotInGuest();
  }

 private:
  static absl::Status NotInGuest() {
    return absl::FailedPreconditionError(
        "the agent is not running as a guest's init: refusing to change the "
        "host");
  }
};

}  // namespace

std::unique_ptr<System> NewGuestSystem() {
  return std::make_unique<GuestSystem>();
}
std::unique_ptr<System> NewHostSystem() {
  return std::make_unique<HostSystem>();
}

absl::StatusOr<std::unique_ptr<Agent>> Agent::Create(AgentOptions options) {
  if (options.system == nullptr) {
    return absl::InvalidArgumentError("AgentOptions.system is required");
  }
  SBX_ASSIGN_OR_RETURN(std::unique_ptr<ProcessTable> processes,
                       ProcessTable::Create());
  SBX_ASSIGN_OR_RETURN(EventFd stop, EventFd::Create());
  return std::unique_ptr<Agent>(
      new Agent(options, std::move(processes), std::move(stop)));
}

Agent::Agent(AgentOptions options, std::unique_ptr<ProcessTable> processes,
             EventFd stop)
    : options_(options),
      processes_(std::move(processes)),
      stop_(std::move(stop)),
      start_ns_(MonotonicNs()) {}

Agent::~Agent() {
  Stop();
  processes_.reset();
}

void Agent::Stop() {
  absl::MutexLock lock(&mu_);
  stopping_ = true;
  (void)stop_.Signal();
  for (int fd : connections_) shutdown(fd, SHUT_RDWR);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return connections_.empty();
  };
  mu_.Await(absl::Condition(&idle));
}

absl::Status Agent::Serve(int listen_fd) {
  while (true) {
    pollfd fds[2] = {{listen_fd, POLLIN, 0}, {stop_.fd(), POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("poll", errno);
    }
    if (fds[1].revents) return absl::OkStatus();
    UniqueFd conn(accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN) continue;
      if (errno == EMFILE || errno == ENFILE) {
        SBX_LOG_EVERY_N_SEC(WARNING, 1) << "accept: " << strerror(errno);
        usleep(10'000);
        continue;
      }
      return ErrnoStatus("accept", errno);
    }
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::OkStatus();
    if (connections_.size() >= kMaxConnections) {
      SBX_LOG_EVERY_N_SEC(WARNING, 1)
          << "over " << kMaxConnections << " connections: refusing one";
      (void)SendError(conn.get(), absl::ResourceExhaustedError(
                                      "agent has too many connections"));
      continue;
    }
    connections_.insert(conn.get());
    std::thread([this, c = std::move(conn)]() mutable {
      HandleConnection(std::move(c));
    }).detach();
  }
}

void Agent::HandleConnection(UniqueFd conn) {
  int fd = conn.get();
  {
    absl::MutexLock lock(&mu_);
    connections_.insert(fd);  // (again, when called directly)
  }
  Request request;
  absl::StatusOr<bool> got = ReadFrame(fd, request);
  if (got.ok() && *got) {
    absl::Status status = Dispatch(fd, request);
    if (!status.ok()) (void)SendError(fd, status);
  } else if (!got.ok()) {
    (void)SendError(fd, got.status());
  }
  absl::MutexLock lock(&mu_);
  connections_.erase(fd);
  conn.reset();
}

absl::Status Agent::Dispatch(int fd, const Request& request) {
  switch (request.op_case()) {
    case Request::kPing: {
      Response response;
      Pong* pong = response.mutable_pong();
      pong->set_agent_version(kAgentVersion);
      pong->set_uptime_ms(
          static_cast<uint64_t>((MonotonicNs() - start_ns_) / 1'000'000));
      pong->set_pid1(options_.pid1);
      return WriteFrame(fd, response);
    }
    case Request::kExec: {
      const Exec& exec = request.exec();
      ExecSpec spec;
      if (!exec.shell().empty()) {
        if (exec.argv_size() > 0) {
          return absl::InvalidArgumentError("give argv or shell, not both");
        }
        spec.argv = {"/bin/sh", "-c", exec.shell()};
      } else {
        spec.argv.assign(exec.argv().begin(), exec.argv().end());
      }
      if (spec.argv.empty()) {
        return absl::InvalidArgumentError("exec needs argv or shell");
      }
      for (const auto& [key, value] : exec.env()) spec.env[key] = value;
      if (!exec.cwd().empty()) {
        SBX_RETURN_IF_ERROR(CheckPath(exec.cwd()));
        spec.cwd = exec.cwd();
      }
      if (exec.has_uid()) spec.uid = exec.uid();
      if (exec.has_gid()) spec.gid = exec.gid();
      spec.background = exec.background();
      spec.timeout = std::chrono::milliseconds(exec.timeout_ms());
      SBX_ASSIGN_OR_RETURN(std::shared_ptr<Process> process,
                           processes_->Spawn(spec));
      uint64_t attachment = process->Attach();
      Response response;
      response.mutable_started()->set_process_id(process->id());
      response.mutable_started()->set_pid(process->pid());
      absl::Status sent = WriteFrame(fd, response);
      if (!sent.ok()) {
        if (!spec.background) (void)process->Signal(SIGKILL);
        process->Detach(attachment);
        if (!spec.background) processes_->Forget(process->id());
        return sent;
      }
      Input first_input;
      first_input.set_data(exec.stdin());
      first_input.set_close(exec.close_stdin());
      return StreamProcess(fd, process, attachment, !spec.background,
                           first_input);
    }
    case Request::kAttach: {
      std::shared_ptr<Process> process =
          processes_->Find(request.attach().process_id());
      if (process == nullptr) {
        return absl::NotFoundError("no process " +
                                   std::to_string(request.attach().process_id()));
      }
      if (!process->background()) {
        return absl::FailedPreconditionError(
            "only background processes can be attached");
      }
      return StreamProcess(fd, process, process->Attach(),
                           /*kill_on_disconnect=*/false, Input());
    }
    case Request::kListProcesses: {
      Response response;
      response.mutable_processes();  // an empty list is still a list
      for (const auto& process : processes_->List()) {
        if (process->exit_reported()) continue;
        auto* entry = response.mutable_processes()->add_processes();
        entry->set_process_id(process->id());
        entry->set_pid(process->pid());
        for (const std::string& arg : process->argv()) entry->add_argv(arg);
        entry->set_background(process->background());
        entry->set_running(process->running());
        entry->set_attached(process->attached());
      }
      return WriteFrame(fd, response);
    }
    case Request::kSignal: {
      std::shared_ptr<Process> process =
          processes_->Find(request.signal().process_id());
      if (process == nullptr) {
        return absl::NotFoundError(
            "no process " + std::to_string(request.signal().process_id()));
      }
      SBX_RETURN_IF_ERROR(process->Signal(request.signal().signal()));
      return SendDone(fd);
    }
    case Request::kReadFile:
      return HandleReadFile(fd, request.read_file());
    case Request::kWriteFile:
      return HandleWriteFile(fd, request.write_file());
    case Request::kListDir:
      return HandleListDir(fd, request.list_dir());
    case Request::kStat:
      return HandleStat(fd, request.stat());
    case Request::kRemove:
      return HandleRemove(fd, request.remove());
    case Request::kRename:
      return HandleRename(fd, request.rename());
    case Request::kMakeDir:
      return HandleMakeDir(fd, request.make_dir());
    case Request::kSync:
      SBX_RETURN_IF_ERROR(options_.system->Sync());
      return SendDone(fd);
    case Request::kAfterRestore: {
      const AfterRestore& after = request.after_restore();
      if (after.entropy().size() < 32 || after.entropy().size() > 4096) {
        return absl::InvalidArgumentError(
            "after_restore needs 32 to 4096 bytes of entropy, got " +
            std::to_string(after.entropy().size()));
      }
      if (after.unix_time_ns() <= 0) {
        return absl::InvalidArgumentError("after_restore needs the time");
      }
      SBX_RETURN_IF_ERROR(options_.system->AddEntropy(after.entropy()));
      SBX_RETURN_IF_ERROR(options_.system->SetClock(after.unix_time_ns()));
      return SendDone(fd);
    }
    case Request::kShutdown: {
      SBX_RETURN_IF_ERROR(options_.system->Sync());
      if (!options_.pid1) {
        return absl::FailedPreconditionError(
            "the agent is not the guest's init: refusing to reboot");
      }
      SBX_RETURN_IF_ERROR(SendDone(fd));
      return options_.system->Reboot();
    }
    case Request::kAttachDisk:
      return HandleAttachDisk(fd, request.attach_disk());
    case Request::kInput:
    case Request::kChunk:
      return absl::InvalidArgumentError(
          "input and chunk frames only follow an exec or a write_file");
    case Request::OP_NOT_SET:
      break;
  }
  return absl::UnimplementedError("unknown operation");
}

absl::Status Agent::HandleAttachDisk(int fd, const AttachDisk& request) {
  const std::string& device = request.device();
  SBX_RETURN_IF_ERROR(CheckDiskDevice(device));
  if (!options_.pid1) {
    return absl::FailedPreconditionError(
        "the agent is not the guest's init: refusing to attach a disk");
  }
  if (!options_.late_disk) {
    return absl::FailedPreconditionError(
        "the guest was not booted with sbx.upper=late: its root filesystem "
        "is set up already");
  }
  {
    absl::MutexLock lock(&mu_);
    if (!attach_device_.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("AttachDisk is allowed once: ", attach_device_,
                       " was attached (or tried) already"));
    }
    attach_device_ = device;
  }
  SBX_LOG(INFO) << "attaching " << device << " as the root's upper layer";
  SBX_RETURN_IF_ERROR(options_.system->AttachDisk(
      device, [this](const std::vector<std::string>& argv) {
        return RunToCompletion(argv);
      }));
  return SendDone(fd);
}

absl::StatusOr<ProgramResult> Agent::RunToCompletion(
    const std::vector<std::string>& argv) {
  constexpr size_t kMaxOutput = 8 << 10;
  ExecSpec spec;
  spec.argv = argv;
  spec.timeout = std::chrono::minutes(30);  // e2fsck of a large disk
  SBX_ASSIGN_OR_RETURN(std::shared_ptr<Process> process,
                       processes_->Spawn(spec));
  const uint64_t attachment = process->Attach();
  process->CloseStdin();
  std::atomic<bool> never{false};
  ProgramResult result;
  absl::Status status;
  while (true) {
    ProcessEvent event = process->Next(attachment, &never);
    if (event.kind == ProcessEvent::Kind::kStdout ||
        event.kind == ProcessEvent::Kind::kStderr) {
      result.output += event.data;
      if (result.output.size() > kMaxOutput) {
        result.output.erase(0, result.output.size() - kMaxOutput);
      }
      continue;
    }
    if (event.kind == ProcessEvent::Kind::kExited) {
      result.signaled = event.exit.signaled;
      result.code = event.exit.code;
    } else {
      status = absl::InternalError(
          absl::StrCat("lost the output of ", argv[0]));
    }
    break;
  }
  process->Detach(attachment);
  processes_->Forget(process->id());
  SBX_RETURN_IF_ERROR(status);
  return result;
}

absl::Status Agent::StreamProcess(int fd,
                                  const std::shared_ptr<Process>& process,
                                  uint64_t attachment,
                                  bool kill_on_disconnect,
                                  const Input& first_input) {
  // The peer's frames (stdin, signals) are read on a second thread; this
  // one sends output. Either noticing the peer gone ends both.
  std::atomic<bool> peer_gone{false};
  // Stdin is written on the reader thread, which a process that does not
  // read it may block; output keeps flowing and the exit still comes.
  auto feed = [&](const Input& input) {
    if (!input.data().empty()) (void)process->WriteStdin(input.data());
    if (input.close()) process->CloseStdin();
  };
  std::thread reader([&] {
    feed(first_input);
    while (true) {
      Request request;
      absl::StatusOr<bool> got = ReadFrame(fd, request);
      if (!got.ok() || !*got) break;
      if (request.has_input()) {
        feed(request.input());
      } else if (request.has_signal()) {
        uint64_t id = request.signal().process_id();
        if (id == 0 || id == process->id()) {
          (void)process->Signal(request.signal().signal());
        }
      } else {
        SBX_LOG_EVERY_N_SEC(WARNING, 1)
            << "unexpected frame during exec; closing the connection";
        break;
      }
    }
    peer_gone = true;
    if (kill_on_disconnect) (void)process->Signal(SIGKILL);
    process->CancelWaits();
  });
  absl::Status status;
  bool finished = false;
  while (true) {
    ProcessEvent event = process->Next(attachment, &peer_gone);
    if (event.kind == ProcessEvent::Kind::kCancelled) break;
    if (event.kind == ProcessEvent::Kind::kDetached) {
      (void)SendError(fd, absl::FailedPreconditionError(absl::StrCat(
                              "another client attached to process ",
                              process->id())));
      break;
    }
    Response response;
    if (event.kind == ProcessEvent::Kind::kExited) {
      FillExited(event.exit, *response.mutable_exited());
      finished = true;
      // Hidden from listings while its exit is sent: a client that lists
      // processes after reading the exit must not see it.
      process->set_exit_reported(true);
    } else {
      Output* output = response.mutable_output();
      output->set_stream(event.kind == ProcessEvent::Kind::kStdout
                             ? Output::STDOUT
                             : Output::STDERR);
      output->set_data(std::move(event.data));
      output->set_dropped_before(event.dropped_before);
    }
    status = WriteFrame(fd, response);
    if (finished) {
      if (status.ok() || kill_on_disconnect) {
        processes_->Forget(process->id());
      } else {
        // The exit did not reach this client: a background process stays
        // for the next Attach to collect.
        process->set_exit_reported(false);
      }
      break;
    }
    if (!status.ok()) {
      if (kill_on_disconnect) (void)process->Signal(SIGKILL);
      break;
    }
  }
  // Wake the reader (blocked in read) and wait for it.
  shutdown(fd, SHUT_RD);
  reader.join();
  process->Detach(attachment);
  if (kill_on_disconnect && !finished) {
    // A killed foreground process is still reaped by the table, but
    // nobody can attach to it.
    processes_->Forget(process->id());
  }
  // An error here only means the peer went away: there is nobody to tell.
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> ListenUnix(std::string_view path) {
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError("unix socket path too long or empty: " +
                                      std::string(path));
  }
  memcpy(addr.sun_path, path.data(), path.size());
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoStatus("socket", errno);
  unlink(std::string(path).c_str());
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoStatus("bind", path, errno);
  }
  if (listen(fd.get(), 64) != 0) return ErrnoStatus("listen", path, errno);
  return fd;
}

absl::StatusOr<UniqueFd> ListenVsock(uint32_t port) {
  UniqueFd fd(socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoStatus("socket AF_VSOCK", errno);
  sockaddr_vm addr = {};
  addr.svm_family = AF_VSOCK;
  addr.svm_port = port;
  addr.svm_cid = VMADDR_CID_ANY;
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoStatus("bind vsock port", std::to_string(port), errno);
  }
  if (listen(fd.get(), 64) != 0) return ErrnoStatus("listen vsock", errno);
  return fd;
}

}  // namespace sbx::agent
