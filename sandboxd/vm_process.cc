#include "sandboxd/vm_process.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "base/logging.h"
#include "base/pidfd.h"
#include "base/status.h"
#include "base/status_macros.h"
#include "base/unique_fd.h"
#include "guest/client.h"
#include "sandboxd/jail/jail.h"
#include "sandboxd/vmm_jail.h"
#include "vmm/control_client.h"

extern char** environ;

namespace sbx::sandboxd {
namespace {


using Clock = std::chrono::steady_clock;

// A sandbox VM's own directory in its VmSpec::dir: all its VMM may write
// (vm_process.h).
std::string VmDir(const std::string& dir) { return dir + "/vm"; }

// How much of console.log an error quotes.
constexpr size_t kConsoleTail = 2048;
// And of the VMM's own stderr (its error is usually the last line).
constexpr size_t kVmmLogTail = 1024;
// Adopt: how long the agent may take to answer.
constexpr uint64_t kAdoptPingMs = 5'000;
// A SIGKILLed VMM is gone well within this.
constexpr int64_t kKillWaitMs = 30'000;
// The longest unix socket path sbx-vmm takes: the vsock device's socket is
// PATH, the guest's connections to host port P go to PATH_P (vmm/config.cc).
constexpr size_t kMaxSocketPath =
    sizeof(sockaddr_un::sun_path) - 1 - (sizeof("_4294967295") - 1);

int64_t MsSince(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() -
                                                               start)
      .count();
}

// What sbx-vmm's exit statuses mean (vmm/config.cc Usage()).
std::string VmmExitMeaning(int how, int status) {
  if (how != CLD_EXITED) return "";
  switch (status) {
    case 1: return " (VMM error)";
    case 2: return " (bad input: flags, or a missing, corrupt or incompatible snapshot)";
    case 3: return " (the guest triple-faulted)";
    case 4: return " (KVM internal error)";
    case 5: return " (VM entry failure)";
    case 6: return " (the guest agent did not answer in time)";
    default: return "";
  }
}

// A /proc file (whose st_size says 0): up to 64 KiB of it. kNotFound when
// the process is gone.
absl::StatusOr<std::string> ReadProcFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT || errno == ESRCH) {
      return absl::NotFoundError(absl::StrCat(path, ": the process is gone"));
    }
    return ErrnoStatus("open", path, errno);
  }
  std::string out;
  char buf[4096];
  while (out.size() < 65536) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      if (errno == ESRCH) {
        return absl::NotFoundError(absl::StrCat(path, ": the process is gone"));
      }
      return ErrnoStatus("read", path, errno);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

// The last `max` bytes of the file at `path`, "" when it cannot be read.
std::string ReadTail(const std::string& path, size_t max) {
  // The VMM writes its console in a directory it owns: a symlink planted
  // there (to a host file) is not followed, a FIFO does not block us.
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd.valid()) return "";
  struct stat st;
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) return "";
  const off_t size = st.st_size;
  const off_t start = size > static_cast<off_t>(max) ? size - static_cast<off_t>(max) : 0;
  std::string out(static_cast<size_t>(size - start), '\0');
  size_t got = 0;
  while (got < out.size()) {
    ssize_t n = ::pread(fd.get(), out.data() + got, out.size() - got,
                        start + static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  out.resize(got);
  return out;
}

// What a person needs to see when a VMM failed: its own stderr (vmm.log in
// `dir`) and the guest console's tail (console.log in `vm_dir`).
std::string Diagnostics(const std::string& dir, const std::string& vm_dir) {
  std::string out;
  std::string vmm_log = ReadTail(dir + "/vmm.log", kVmmLogTail);
  if (!vmm_log.empty()) absl::StrAppend(&out, "\n--- sbx-vmm stderr (tail) ---\n", vmm_log);
  std::string console = ReadTail(vm_dir + "/console.log", kConsoleTail);
  absl::StrAppend(&out, "\n--- console.log (last ", kConsoleTail, " bytes) ---\n",
                  console.empty() ? std::string("(empty)") : console);
  return out;
}

absl::Status CheckAbsolute(const char* what, const std::string& path) {
  if (path.empty() || path[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " '", path, "' is not an absolute path"));
  }
  if (path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(what, " holds a NUL byte"));
  }
  return absl::OkStatus();
}

absl::Status CheckIsDir(const char* what, const std::string& path) {
  SBX_RETURN_IF_ERROR(CheckAbsolute(what, path));
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": stat ", path, ": ", strerror(errno)));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " ", path, " is not a directory"));
  }
  return absl::OkStatus();
}

absl::Status CheckIsFile(const char* what, const std::string& path) {
  SBX_RETURN_IF_ERROR(CheckAbsolute(what, path));
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": stat ", path, ": ", strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " ", path, " is not a file"));
  }
  return absl::OkStatus();
}

absl::Status CheckSnapshotDir(const char* what, const std::string& dir) {
  SBX_RETURN_IF_ERROR(CheckIsDir(what, dir));
  return CheckIsFile(what, dir + "/vmstate");
}

// sbx-vmm reads "--disk FILE,ro" and "--vsock PATH,cid=N": paths that look
// like those are refused rather than misread.
absl::Status CheckFlagSafe(const char* what, const std::string& path) {
  if (path.ends_with(",ro") || path.find(",cid=") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " '", path, "': paths ending in ',ro' or holding ',cid=' are not supported"));
  }
  return absl::OkStatus();
}

// `dir`: where the VM's sockets go, below `suffix` ("/vm" for a sandbox).
absl::Status CheckSocketDir(const char* what, const std::string& dir,
                            const std::string& suffix = "") {
  const std::string longest = absl::StrCat(dir, suffix, "/control.sock");  // > vsock.sock
  if (longest.size() > kMaxSocketPath) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " '", dir, "' is too long for the VM's unix sockets (at most ",
        kMaxSocketPath - suffix.size() - (sizeof("/control.sock") - 1), " bytes)"));
  }
  return CheckFlagSafe(what, dir);
}

absl::Status CheckBinary(const std::string& binary) {
  if (binary.empty()) return absl::FailedPreconditionError("no sbx-vmm binary configured");
  if (::access(binary.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("sbx-vmm binary ", binary, ": ", strerror(errno)));
  }
  return absl::OkStatus();
}

// The guest's name of a writable disk: /dev/vd[a-z] (the agent takes no
// other).
absl::Status CheckGuestDisk(const std::string& device) {
  if (device.size() != 8 || !device.starts_with("/dev/vd") || device[7] < 'a' ||
      device[7] > 'z') {
    return absl::InvalidArgumentError(
        absl::StrCat("attach_device '", device, "' is not /dev/vd[a-z]"));
  }
  return absl::OkStatus();
}

// Runs a host tool (argv[0] an absolute path) to completion: its exit
// status (-1 when a signal ended it) and its output (stdout and stderr,
// the last 4 KiB).
struct ToolResult {
  int status = -1;
  std::string output;
};
absl::StatusOr<ToolResult> RunTool(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) return ErrnoStatus("pipe2", errno);
  UniqueFd out_read(out[0]), out_write(out[1]);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out_write.get(), 1);
  posix_spawn_file_actions_adddup2(&actions, out_write.get(), 2);
  pid_t pid = 0;
  const int err = ::posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0) return ErrnoStatus("posix_spawn", argv[0], err);
  out_write.reset();
  ToolResult result;
  char buf[4096];
  while (true) {
    ssize_t n = ::read(out_read.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    result.output.append(buf, static_cast<size_t>(n));
    if (result.output.size() > 8192) result.output.erase(0, result.output.size() - 4096);
  }
  if (result.output.size() > 4096) result.output.erase(0, result.output.size() - 4096);
  int wstatus = 0;
  while (::waitpid(pid, &wstatus, 0) < 0) {
    if (errno != EINTR) return ErrnoStatus("waitpid", argv[0], errno);
  }
  if (WIFEXITED(wstatus)) result.status = WEXITSTATUS(wstatus);
  return result;
}

// The host's mkfs.ext4 (e2fsprogs).
absl::StatusOr<std::string> FindMkfsExt4() {
  for (const char* path : {"/sbin/mkfs.ext4", "/usr/sbin/mkfs.ext4"}) {
    if (::access(path, X_OK) == 0) return std::string(path);
  }
  return absl::FailedPreconditionError(
      "mkfs.ext4 not found in /sbin or /usr/sbin: install e2fsprogs");
}

// Unlinks the sockets an earlier VMM of `dir` left behind (sbx-vmm refuses
// or replaces some of them; a stale one would also answer our dial with
// ECONNREFUSED instead of ENOENT). Only sockets are touched.
absl::Status RemoveStaleSockets(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return ErrnoStatus("opendir", dir, errno);
  std::vector<std::string> stale;
  while (struct dirent* e = ::readdir(d)) {
    std::string_view name(e->d_name);
    if (name == "vsock.sock" || name == "control.sock" || name.starts_with("vsock.sock_")) {
      stale.emplace_back(name);
    }
  }
  ::closedir(d);
  for (const std::string& name : stale) {
    const std::string path = absl::StrCat(dir, "/", name);
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return ErrnoStatus("unlink", path, errno);
    }
  }
  return absl::OkStatus();
}

// Moves `path` to `path`.prev (replacing an older one).
void RotateLog(const std::string& path) {
  if (::rename(path.c_str(), absl::StrCat(path, ".prev").c_str()) != 0 &&
      errno != ENOENT) {
    SBX_LOG(WARNING) << "rename " << path << ": " << strerror(errno);
  }
}

absl::Status FsyncDir(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus("open", dir, errno);
  if (::fsync(fd.get()) != 0) return ErrnoStatus("fsync", dir, errno);
  return absl::OkStatus();
}

std::string ParentDir(const std::string& path) {
  std::string parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? std::string("/") : parent;
}

void RemoveAll(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
  if (ec) SBX_LOG(WARNING) << "removing " << path << ": " << ec.message();
}

// Makes the complete directory `from` the directory `to`, replacing what
// was there: with RENAME_EXCHANGE where the filesystem has it (there is no
// moment without `to`), else `to` -> `to`.old, `from` -> `to`. The parent
// is fsynced.
absl::Status ReplaceDir(const std::string& from, const std::string& to) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_EXCHANGE) == 0) {
    RemoveAll(from);  // now the old one
    return FsyncDir(ParentDir(to));
  }
  const int err = errno;
  if (err == ENOENT) {  // no `to` yet
    if (::rename(from.c_str(), to.c_str()) != 0) {
      return ErrnoStatus("rename", absl::StrCat(from, " to ", to), errno);
    }
    return FsyncDir(ParentDir(to));
  }
  if (err != EINVAL && err != ENOSYS && err != EOPNOTSUPP) {
    return ErrnoStatus("renameat2 RENAME_EXCHANGE", absl::StrCat(from, " and ", to), err);
  }
  const std::string old = to + ".old";
  RemoveAll(old);
  if (::rename(to.c_str(), old.c_str()) != 0) {
    return ErrnoStatus("rename", absl::StrCat(to, " to ", old), errno);
  }
  if (::rename(from.c_str(), to.c_str()) != 0) {
    const int e = errno;
    (void)::rename(old.c_str(), to.c_str());
    return ErrnoStatus("rename", absl::StrCat(from, " to ", to), e);
  }
  RemoveAll(old);
  return FsyncDir(ParentDir(to));
}

// Moves the directory `from`, which a VMM wrote in its own directory, to
// `to` (on the same filesystem). A VMM that put a symlink there instead
// does not get sandboxd to move (and later bind) what it points to.
absl::Status MoveVmmDir(const std::string& from, const std::string& to) {
  struct stat st;
  if (::lstat(from.c_str(), &st) != 0) return ErrnoStatus("stat", from, errno);
  if (!S_ISDIR(st.st_mode)) {
    return absl::DataLossError(absl::StrCat(from, " is not a directory"));
  }
  if (::rename(from.c_str(), to.c_str()) != 0) {
    return ErrnoStatus("rename", absl::StrCat(from, " to ", to), errno);
  }
  return absl::OkStatus();
}

// A spawned or adopted sbx-vmm process, watched through its pidfd.
class VmmProcess {
 public:
  VmmProcess(pid_t pid, UniqueFd pidfd, bool is_child)
      : pid_(pid), pidfd_(std::move(pidfd)), is_child_(is_child) {}

  pid_t pid() const { return pid_; }

  // Whether it ended (reaping it if it is our child); then `how`.
  bool Ended(std::string* how) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return CheckLocked(how);
  }

  // Waits up to `timeout_ms` for it to end; true if it did.
  bool Wait(int64_t timeout_ms, std::string* how) ABSL_LOCKS_EXCLUDED(mu_) {
    const Clock::time_point start = Clock::now();
    while (true) {
      if (Ended(how)) return true;
      const int64_t left = timeout_ms - MsSince(start);
      if (left <= 0) return false;
      // The pidfd turns readable when the process has exited.
      pollfd p = {.fd = pidfd_.get(), .events = POLLIN, .revents = 0};
      int n = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
      if (n < 0 && errno != EINTR) {
        SBX_LOG(ERROR) << "poll pidfd of " << pid_ << ": " << strerror(errno);
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
  }

  // Its exit status once it ended by exiting and we reaped it; else -1.
  int exit_status() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return exit_status_;
  }

  // SIGKILLs it and waits for it to end.
  void Kill() ABSL_LOCKS_EXCLUDED(mu_) {
    std::string how;
    if (Ended(&how)) return;
    if (PidfdSendSignal(pidfd_.get(), SIGKILL) != 0 && errno != ESRCH) {
      SBX_LOG(ERROR) << "pidfd_send_signal SIGKILL to sbx-vmm " << pid_ << ": "
                     << strerror(errno);
    }
    if (!Wait(kKillWaitMs, &how)) {
      SBX_LOG(ERROR) << "sbx-vmm " << pid_ << " still runs " << kKillWaitMs
                     << " ms after SIGKILL";
    }
  }

 private:
  bool CheckLocked(std::string* how) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!ended_) {
      pollfd p = {.fd = pidfd_.get(), .events = POLLIN, .revents = 0};
      if (::poll(&p, 1, 0) <= 0 || (p.revents & (POLLIN | POLLHUP)) == 0) return false;
      ended_ = true;
      how_ = "the VMM process ended";
      if (is_child_) {
        siginfo_t info = {};
        if (::waitid(P_PIDFD, static_cast<id_t>(pidfd_.get()), &info,
                     WEXITED | WNOHANG) == 0 &&
            info.si_pid != 0) {
          if (info.si_code == CLD_EXITED) exit_status_ = info.si_status;
          how_ = absl::StrCat("sbx-vmm ", DescribeExit(info.si_code, info.si_status),
                              VmmExitMeaning(info.si_code, info.si_status));
        }
        // ECHILD: reaped elsewhere (another handle of the same VM); the
        // status is gone with it.
      }
    }
    if (how != nullptr) *how = how_;
    return true;
  }

  const pid_t pid_;
  const UniqueFd pidfd_;
  const bool is_child_;
  absl::Mutex mu_;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  std::string how_ ABSL_GUARDED_BY(mu_);
  int exit_status_ ABSL_GUARDED_BY(mu_) = -1;
};

struct Spawned {
  std::unique_ptr<VmmProcess> process;
  uint64_t start_ticks = 0;
};

void KillAndReap(pid_t pid) {
  ::kill(pid, SIGKILL);
  while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
  }
}

// Runs argv[0] with `argv`, stdin /dev/null, stdout and stderr appended to
// `log_path`, in a session of its own (a terminal's ^C for sandboxd does not
// reach it). With `cgroup`, the child is in it before it execs: it waits on
// a pipe until the parent has moved it.
absl::StatusOr<Spawned> Spawn(const std::vector<std::string>& argv,
                              const std::string& log_path, Cgroup* cgroup) {
  // Everything the child needs, prepared before fork: it may only make
  // async-signal-safe calls.
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  UniqueFd null_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!null_fd.valid()) return ErrnoStatus("open", "/dev/null", errno);
  UniqueFd log_fd(::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640));
  if (!log_fd.valid()) return ErrnoStatus("open", log_path, errno);
  int go[2];
  if (::pipe2(go, O_CLOEXEC) != 0) return ErrnoStatus("pipe2", errno);
  UniqueFd go_read(go[0]), go_write(go[1]);
  int err[2];
  if (::pipe2(err, O_CLOEXEC) != 0) return ErrnoStatus("pipe2", errno);
  UniqueFd err_read(err[0]), err_write(err[1]);
  sigset_t no_signals;
  sigemptyset(&no_signals);
  char** const envp = environ;

  const pid_t pid = ::fork();
  if (pid < 0) return ErrnoStatus("fork", argv[0], errno);
  if (pid == 0) {
    // The child: async-signal-safe calls only, no allocation, no logging.
    ::sigprocmask(SIG_SETMASK, &no_signals, nullptr);
    ::setsid();
    const int from[3] = {null_fd.get(), log_fd.get(), log_fd.get()};
    for (int target = 0; target < 3; ++target) {
      if (from[target] == target) {
        ::fcntl(target, F_SETFD, 0);
      } else if (::dup2(from[target], target) < 0) {
        int e = errno;
        (void)!::write(err_write.get(), &e, sizeof(e));
        ::_exit(127);
      }
    }
    // Nothing else of sandboxd's goes along, O_CLOEXEC or not.
    ::syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC);
    char c;
    ssize_t n;
    do {
      n = ::read(go_read.get(), &c, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1) ::_exit(127);  // the parent gave up on us
    ::execve(args[0], args.data(), envp);
    int e = errno;
    (void)!::write(err_write.get(), &e, sizeof(e));
    ::_exit(127);
  }
  go_read.reset();
  err_write.reset();
  UniqueFd pidfd(PidfdOpen(pid));
  if (!pidfd.valid()) {
    absl::Status s = ErrnoStatus("pidfd_open", absl::StrCat("pid ", pid), errno);
    KillAndReap(pid);
    return s;
  }
  absl::StatusOr<uint64_t> ticks = ProcessStartTicks(pid);
  if (!ticks.ok()) {
    KillAndReap(pid);
    return ticks.status();
  }
  if (cgroup != nullptr) {
    if (absl::Status s = cgroup->AddProcess(pid); !s.ok()) {
      KillAndReap(pid);
      return Annotate(s, "moving sbx-vmm into its cgroup");
    }
  }
  if (::write(go_write.get(), "g", 1) != 1) {
    absl::Status s = ErrnoStatus("write", "the child's start pipe", errno);
    KillAndReap(pid);
    return s;
  }
  go_write.reset();
  // EOF: execve succeeded (the pipe is O_CLOEXEC); an errno: it failed.
  int child_errno = 0;
  ssize_t n;
  do {
    n = ::read(err_read.get(), &child_errno, sizeof(child_errno));
  } while (n < 0 && errno == EINTR);
  if (n == static_cast<ssize_t>(sizeof(child_errno))) {
    KillAndReap(pid);
    return ErrnoStatus("execve", argv[0], child_errno);
  }
  Spawned spawned;
  spawned.process = std::make_unique<VmmProcess>(pid, std::move(pidfd), /*is_child=*/true);
  spawned.start_ticks = *ticks;
  return spawned;
}

// The guest agent behind the vsock device's pinned socket.
class PinnedVsockDialer final : public agent::Dialer {
 public:
  PinnedVsockDialer(PinnedSocket* socket, uint32_t port) : socket_(socket), port_(port) {}
  absl::StatusOr<UniqueFd> Dial() override {
    SBX_ASSIGN_OR_RETURN(std::string path, socket_->Path());
    return agent::NewVsockDialer(path, port_)->Dial();
  }

 private:
  PinnedSocket* const socket_;
  const uint32_t port_;
};

// A jailed VMM's id, handed back to its pool once the VMM has ended.
struct JailId {
  UidPool* pool = nullptr;  // null: not jailed
  uid_t uid = 0;
};

// As Spawn, in the jail `jail` (whose argv, stdio and before_setup are
// set here): the child is in `cgroup` before its setup begins.
absl::StatusOr<Spawned> SpawnInJail(JailSpec jail, const std::vector<std::string>& argv,
                                    const std::string& log_path, Cgroup* cgroup) {
  UniqueFd log_fd(::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640));
  if (!log_fd.valid()) return ErrnoStatus("open", log_path, errno);
  jail.argv = argv;
  jail.stdout_fd = log_fd.get();
  jail.stderr_fd = log_fd.get();
  if (cgroup != nullptr) {
    jail.before_setup = [cgroup](pid_t pid) {
      return Annotate(cgroup->AddProcess(pid), "moving sbx-vmm into its cgroup");
    };
  }
  SBX_ASSIGN_OR_RETURN(JailedProcess process, SpawnJailed(jail));
  absl::StatusOr<uint64_t> ticks = ProcessStartTicks(process.pid());
  if (!ticks.ok()) {
    (void)process.Kill(SIGKILL);
    (void)process.Wait();
    return ticks.status();
  }
  Spawned spawned;
  const pid_t pid = process.pid();
  spawned.process = std::make_unique<VmmProcess>(pid, process.ReleasePidfd(), /*is_child=*/true);
  spawned.start_ticks = *ticks;
  return spawned;
}

// An absolute path as the jail takes it: normalized, no trailing slash.
std::string JailPath(const std::string& path) {
  std::string p = std::filesystem::path(path).lexically_normal().string();
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

// A directory of root's, searchable by all (a jail's root), made if missing.
absl::Status MakeRootDir(const std::string& dir, mode_t mode) {
  if (::mkdir(dir.c_str(), mode) != 0 && errno != EEXIST) return ErrnoStatus("mkdir", dir, errno);
  struct stat st;
  if (::lstat(dir.c_str(), &st) != 0) return ErrnoStatus("stat", dir, errno);
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(dir, " is not a directory"));
  }
  if (st.st_uid != ::geteuid() && ::lchown(dir.c_str(), ::geteuid(), ::getegid()) != 0) {
    return ErrnoStatus("chown", dir, errno);
  }
  if ((st.st_mode & 07777) != mode && ::chmod(dir.c_str(), mode) != 0) {
    return ErrnoStatus("chmod", dir, errno);
  }
  return absl::OkStatus();
}

// The largest regular file among `paths` and the files directly in `dirs`.
uint64_t LargestFile(const std::vector<std::string>& paths,
                     const std::vector<std::string>& dirs) {
  uint64_t largest = 0;
  auto consider = [&](const std::string& path) {
    struct stat st;
    if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      largest = std::max<uint64_t>(largest, static_cast<uint64_t>(st.st_size));
    }
  };
  for (const std::string& p : paths) consider(p);
  for (const std::string& d : dirs) {
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(d, ec)) consider(e.path().string());
  }
  return largest;
}

class VmmVm final : public Vm {
 public:
  VmmVm(VmSpec spec, const VmmBackendOptions& options,
        std::unique_ptr<VmmProcess> process, uint64_t start_ticks,
        std::unique_ptr<Cgroup> cgroup, JailId jail)
      : spec_(std::move(spec)),
        exit_timeout_ms_(options.exit_timeout_ms),
        sleep_timeout_ms_(options.sleep_timeout_ms),
        process_(std::move(process)),
        start_ticks_(start_ticks),
        jail_(jail),
        vsock_(VmDir(spec_.dir) + "/vsock.sock", Owner()),
        control_(VmDir(spec_.dir) + "/control.sock", Owner()),
        agent_(std::make_unique<PinnedVsockDialer>(&vsock_, options.agent_port)),
        cgroup_(std::move(cgroup)) {}

  ~VmmVm() override {
    // The VMM outlives this object unless it was ended: a restarted
    // sandboxd adopts it, cgroup included.
    absl::MutexLock lock(&mu_);
    if (cgroup_ != nullptr) cgroup_->Release();
    if (jail_.pool != nullptr && process_->Ended(nullptr)) jail_.pool->Release(jail_.uid);
  }

  agent::Client& agent() override { return agent_; }

  VmHandle handle() const override {
    return VmHandle{.pid = process_->pid(), .start_ticks = start_ticks_};
  }

  bool Alive(std::string* why_not) override {
    std::string how;
    if (!process_->Ended(&how)) return true;
    if (why_not != nullptr) {
      absl::MutexLock lock(&mu_);
      *why_not = ended_by_.empty() ? how : ended_by_;
    }
    return false;
  }

  void Kill() override {
    process_->Kill();
    absl::MutexLock lock(&mu_);
    if (ended_by_.empty()) ended_by_ = "the VM was killed";
    RemoveCgroupLocked();
  }

  absl::Status Sleep(const std::string& snapshot_dir) override;

  // Pings the agent until it answers, `timeout_ms` pass or the VMM ends.
  absl::Status WaitForAgent(uint64_t timeout_ms);
  // Fresh entropy and the host's clock for a restored guest.
  absl::Status AfterRestore();
  // The agent's AttachDisk of spec.attach_device (with the console's tail
  // on error: the guest logs why there).
  absl::Status AttachDisk();
  // The VMM's control socket (connect to it, not to its name).
  absl::StatusOr<std::unique_ptr<vmm::ControlClient>> Control() {
    SBX_ASSIGN_OR_RETURN(std::string path, control_.Path());
    return vmm::ControlClient::Connect(path);
  }
  // Ends the VMM and its cgroup quietly (for errors of Start and Adopt).
  void Discard() {
    process_->Kill();
    absl::MutexLock lock(&mu_);
    RemoveCgroupLocked();
  }

 private:
  std::optional<uid_t> Owner() const {
    return jail_.pool != nullptr ? std::optional<uid_t>(jail_.uid) : std::nullopt;
  }

  void RemoveCgroupLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (cgroup_ == nullptr) return;
    if (absl::Status s = cgroup_->Remove(); !s.ok()) {
      SBX_LOG(ERROR) << "sandbox " << spec_.dir << ": removing its cgroup: " << s;
      return;  // Remove is idempotent: Kill tries again
    }
    cgroup_.reset();
  }

  const VmSpec spec_;
  const uint64_t exit_timeout_ms_;
  const uint64_t sleep_timeout_ms_;
  const std::unique_ptr<VmmProcess> process_;
  const uint64_t start_ticks_;
  const JailId jail_;
  PinnedSocket vsock_;
  PinnedSocket control_;
  agent::Client agent_;
  // Held through a Sleep: one at a time.
  absl::Mutex sleep_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  absl::Mutex mu_;
  std::unique_ptr<Cgroup> cgroup_ ABSL_GUARDED_BY(mu_);
  // Why the VM ended when this object ended it ("" otherwise).
  std::string ended_by_ ABSL_GUARDED_BY(mu_);
};

absl::Status VmmVm::WaitForAgent(uint64_t timeout_ms) {
  const Clock::time_point start = Clock::now();
  absl::Status last;
  while (true) {
    std::string how;
    if (process_->Ended(&how)) {
      return absl::UnavailableError(absl::StrCat(
          "the VM of ", spec_.dir, " ended before its agent answered: ", how,
          Diagnostics(spec_.dir, VmDir(spec_.dir))));
    }
    absl::StatusOr<agent::Pong> pong = agent_.Ping();
    if (pong.ok()) return absl::OkStatus();
    last = pong.status();
    if (static_cast<uint64_t>(MsSince(start)) >= timeout_ms) {
      return absl::DeadlineExceededError(absl::StrCat(
          "the guest agent of ", spec_.dir, " did not answer within ", timeout_ms,
          " ms (last: ", last.ToString(), ")", Diagnostics(spec_.dir, VmDir(spec_.dir))));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

absl::Status VmmVm::AfterRestore() {
  char entropy[32];
  size_t got = 0;
  while (got < sizeof(entropy)) {
    ssize_t n = ::getrandom(entropy + got, sizeof(entropy) - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus("getrandom", errno);
    got += static_cast<size_t>(n);
  }
  timespec now;
  ::clock_gettime(CLOCK_REALTIME, &now);
  const int64_t ns = int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
  return Annotate(agent_.AfterRestore(std::string_view(entropy, sizeof(entropy)), ns),
                  "agent AfterRestore");
}

absl::Status VmmVm::AttachDisk() {
  absl::Status attached = agent_.AttachDisk(spec_.attach_device);
  if (attached.ok()) return attached;
  std::string how;
  if (process_->Ended(&how)) {
    return absl::UnavailableError(absl::StrCat(
        "the VM of ", spec_.dir, " ended while its agent attached ",
        spec_.attach_device, ": ", how, Diagnostics(spec_.dir, VmDir(spec_.dir))));
  }
  return Annotate(attached, absl::StrCat("agent AttachDisk ", spec_.attach_device,
                                         " (", spec_.disks.back(), ")"));
}

absl::Status VmmVm::Sleep(const std::string& snapshot_dir) {
  absl::MutexLock sleep_lock(&sleep_mu_);
  std::string how;
  if (process_->Ended(&how)) {
    return absl::FailedPreconditionError(absl::StrCat("the VM is not running: ", how));
  }
  SBX_RETURN_IF_ERROR(CheckAbsolute("snapshot directory", snapshot_dir));
  std::error_code ec;
  if (snapshot_dir == spec_.template_snapshot_dir ||
      std::filesystem::equivalent(snapshot_dir, spec_.template_snapshot_dir, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sleep into ", snapshot_dir, ": that is the template's snapshot"));
  }
  const Clock::time_point start = Clock::now();
  // The way out of a sleep that hangs: the VMM is killed, every blocked
  // call below fails, and the caller finds the VM ended.
  absl::Notification sleep_done;
  std::thread watchdog([this, &sleep_done] {
    if (sleep_done.WaitForNotificationWithTimeout(
            absl::Milliseconds(static_cast<int64_t>(sleep_timeout_ms_)))) {
      return;
    }
    SBX_LOG(WARNING) << "sandbox " << spec_.dir << ": sleep still not done after "
                     << sleep_timeout_ms_ << " ms; killing sbx-vmm " << process_->pid();
    process_->Kill();
  });
  absl::Cleanup stop_watchdog = [&] {
    sleep_done.Notify();
    watchdog.join();
  };
  // The guest's disks agree with its memory from here on.
  SBX_RETURN_IF_ERROR(Annotate(agent_.Sync(), "sleep: agent Sync"));
  SBX_ASSIGN_OR_RETURN(std::unique_ptr<vmm::ControlClient> control, Control());
  SBX_RETURN_IF_ERROR(Annotate(control->Pause(), "sleep: pause"));
  // The VMM writes in its own directory (all a jailed one may write);
  // the snapshot then moves beside `snapshot_dir` and into place.
  const std::string vmm_dir = VmDir(spec_.dir) + "/snapshot.new";
  const std::string new_dir = snapshot_dir + ".new";
  RemoveAll(vmm_dir);  // a failed sleep's
  RemoveAll(new_dir);
  absl::Status saved =
      Annotate(control->SnapshotDiff(vmm_dir, spec_.template_snapshot_dir).status(),
               absl::StrCat("sleep: diff snapshot into ", vmm_dir));
  if (saved.ok()) saved = MoveVmmDir(vmm_dir, new_dir);
  if (saved.ok()) saved = ReplaceDir(new_dir, snapshot_dir);
  if (!saved.ok()) {
    RemoveAll(vmm_dir);
    RemoveAll(new_dir);
    if (absl::Status resumed = control->Resume(); !resumed.ok()) {
      return Annotate(saved, absl::StrCat("(and resuming the VM failed: ",
                                          resumed.ToString(), ")"));
    }
    return saved;
  }
  const int64_t snapshot_ms = MsSince(start);
  // The snapshot is in place: from here on the VM ends whatever happens.
  if (absl::Status s = control->Shutdown(); !s.ok()) {
    SBX_LOG(WARNING) << "sandbox " << spec_.dir << ": Shutdown: " << s;
  }
  control.reset();
  if (!process_->Wait(static_cast<int64_t>(exit_timeout_ms_), &how)) {
    SBX_LOG(WARNING) << "sandbox " << spec_.dir << ": sbx-vmm " << process_->pid()
                     << " did not exit within " << exit_timeout_ms_
                     << " ms of Shutdown; killing it";
    process_->Kill();
  }
  absl::MutexLock lock(&mu_);
  ended_by_ = absl::StrCat("the VM was put to sleep into ", snapshot_dir);
  RemoveCgroupLocked();
  SBX_LOG(INFO) << "sandbox " << spec_.dir << ": asleep in " << snapshot_dir
                << " (snapshot " << snapshot_ms << " ms, all " << MsSince(start)
                << " ms)";
  return absl::OkStatus();
}

absl::Status ValidateVmSpec(const VmSpec& spec) {
  SBX_RETURN_IF_ERROR(CheckIsDir("sandbox directory", spec.dir));
  SBX_RETURN_IF_ERROR(CheckSocketDir("sandbox directory", spec.dir, "/vm"));
  SBX_RETURN_IF_ERROR(CheckSnapshotDir("snapshot", spec.snapshot_dir));
  SBX_RETURN_IF_ERROR(CheckSnapshotDir("template snapshot", spec.template_snapshot_dir));
  if (spec.disks.empty()) return absl::InvalidArgumentError("a VM needs its disks");
  for (const std::string& disk : spec.disks) {
    SBX_RETURN_IF_ERROR(CheckIsFile("disk", disk));
    SBX_RETURN_IF_ERROR(CheckFlagSafe("disk", disk));
  }
  if (!spec.cgroup_name.empty()) {
    SBX_RETURN_IF_ERROR(Cgroup::ValidateName(spec.cgroup_name));
  }
  if (!spec.attach_device.empty()) {
    SBX_RETURN_IF_ERROR(CheckGuestDisk(spec.attach_device));
    if (spec.disks.size() < 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "attach_device ", spec.attach_device, " without a writable disk"));
    }
  }
  if (spec.ready_timeout_ms == 0) {
    return absl::InvalidArgumentError("ready_timeout_ms must be positive");
  }
  return absl::OkStatus();
}

// The VMM the process `pid` runs must be sbx-vmm, started for `spec`.
absl::Status CheckIsOurVmm(pid_t pid, const std::string& vmm_binary, const VmSpec& spec) {
  const std::string proc = absl::StrCat("/proc/", pid);
  const std::string want = std::filesystem::path(vmm_binary).filename().string();
  // The executable: /proc/PID/exe ("... (deleted)" after an upgrade
  // replaced the binary).
  char exe[4096];
  ssize_t n = ::readlink((proc + "/exe").c_str(), exe, sizeof(exe) - 1);
  if (n < 0) {
    if (errno == ENOENT || errno == ESRCH) {
      return absl::NotFoundError(absl::StrCat("process ", pid, " is gone"));
    }
    return ErrnoStatus("readlink", proc + "/exe", errno);
  }
  std::string exe_path(exe, static_cast<size_t>(n));
  if (exe_path.ends_with(" (deleted)")) exe_path.resize(exe_path.size() - 10);
  const std::string name = std::filesystem::path(exe_path).filename().string();
  if (name != want) {
    return absl::NotFoundError(absl::StrCat("process ", pid, " runs ", exe_path,
                                            ", not ", want));
  }
  // Its command line names this sandbox's socket.
  absl::StatusOr<std::string> cmdline = ReadProcFile(proc + "/cmdline");
  if (!cmdline.ok()) {
    return absl::NotFoundError(absl::StrCat("process ", pid, " is gone"));
  }
  std::vector<std::string> args = absl::StrSplit(*cmdline, '\0');
  const std::string vsock = VmDir(spec.dir) + "/vsock.sock";
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == "--vsock" && args[i + 1] == vsock) return absl::OkStatus();
  }
  return absl::NotFoundError(
      absl::StrCat("process ", pid, " is an sbx-vmm, but not the one of ", spec.dir));
}

// The parent pid from /proc/PID/stat (field 4); 0 when unknown.
pid_t ParentPid(pid_t pid) {
  absl::StatusOr<std::string> stat = ReadProcFile(absl::StrCat("/proc/", pid, "/stat"));
  if (!stat.ok()) return 0;
  const size_t close = stat->rfind(')');
  if (close == std::string::npos) return 0;
  std::vector<std::string> fields =
      absl::StrSplit(stat->substr(close + 1), ' ', absl::SkipEmpty());
  int ppid = 0;
  if (fields.size() < 2 || !absl::SimpleAtoi(fields[1], &ppid)) return 0;
  return ppid;
}

class VmmBackend final : public VmBackend {
 public:
  explicit VmmBackend(VmmBackendOptions options)
      : options_(std::move(options)),
        vmm_path_(options_.jail.has_value() ? JailPath(options_.vmm_binary)
                                            : options_.vmm_binary) {
    if (options_.jail.has_value()) {
      uids_ = std::make_unique<UidPool>(options_.jail->first_uid, options_.jail->uid_count);
    }
  }

  absl::StatusOr<std::unique_ptr<Vm>> Start(const VmSpec& spec) override;
  absl::StatusOr<std::unique_ptr<Vm>> Adopt(const VmSpec& spec,
                                            const VmHandle& handle) override;
  absl::StatusOr<TemplateBuild> BuildTemplate(
      const TemplateSpec& spec,
      const std::function<void(const std::string&)>& progress) override;

 private:
  // The cgroup for a new VM of `spec` (nullptr: none). A group left over
  // by an earlier run of the sandbox is emptied and replaced: its VMM
  // must not run beside the new one on the same disk.
  absl::StatusOr<std::unique_ptr<Cgroup>> MakeCgroup(const VmSpec& spec) {
    if (spec.cgroup_name.empty() || !options_.cgroups.has_value()) return nullptr;
    absl::StatusOr<std::unique_ptr<Cgroup>> group =
        Cgroup::Create(*options_.cgroups, spec.cgroup_name, spec.limits);
    if (absl::IsAlreadyExists(group.status())) {
      SBX_LOG(WARNING) << "sandbox " << spec.dir << ": cgroup " << spec.cgroup_name
                       << " left over from an earlier run; removing it";
      SBX_ASSIGN_OR_RETURN(std::unique_ptr<Cgroup> old,
                           Cgroup::Adopt(*options_.cgroups, spec.cgroup_name));
      SBX_RETURN_IF_ERROR(old->Remove());
      group = Cgroup::Create(*options_.cgroups, spec.cgroup_name, spec.limits);
    }
    return group;
  }

  // A uid for one jailed VMM (JailId::pool null: no jail).
  absl::StatusOr<JailId> TakeJailId() {
    if (uids_ == nullptr) return JailId{};
    SBX_ASSIGN_OR_RETURN(uid_t uid, uids_->Allocate());
    return JailId{uids_.get(), uid};
  }
  static void ReleaseJailId(const JailId& jail) {
    if (jail.pool != nullptr) jail.pool->Release(jail.uid);
  }

  // The binary is there and, for the jail, static.
  absl::Status CheckVmm() const {
    SBX_RETURN_IF_ERROR(CheckBinary(vmm_path_));
    if (uids_ != nullptr) SBX_RETURN_IF_ERROR(CheckStaticExecutable(vmm_path_));
    return absl::OkStatus();
  }

  // What every jailed sbx-vmm gets: its binary, /dev/kvm and /dev/null (made
  // afresh, its own), a /proc of its pid namespace (/proc/meminfo,
  // /proc/self/...), no network, its own ids, rlimits.
  JailSpec BaseJail(uid_t uid, const std::string& root_dir, uint64_t max_file_bytes) const {
    JailSpec jail;
    jail.root_dir = root_dir;
    jail.binds.push_back({vmm_path_, vmm_path_, /*writable=*/false, /*exec=*/true});
    jail.devices = {"/dev/kvm", "/dev/null"};
    jail.mount_proc = true;
    jail.uid = uid;
    jail.gid = uid;
    // vsock: up to 1024 connections, plus disks, memory files, sockets.
    jail.max_open_files = 2048;
    // Nothing it writes may outgrow its disks or its guest's memory.
    jail.max_file_size = max_file_bytes + (uint64_t{1} << 20);
    // Threads count (RLIMIT_NPROC is per uid; each VMM has its own): one
    // per vCPU and a few; the cgroup's pids limit is the tight one.
    jail.max_processes = 256;
    jail.new_net = true;
    if (const char* level = std::getenv("SBX_LOG_LEVEL"); level != nullptr) {
      jail.env.push_back(absl::StrCat("SBX_LOG_LEVEL=", level));
    }
    return jail;
  }

  // The jail of a restored VM run as `uid`: its directory (read-write), its
  // writable disks, the template's rootfs and snapshot and its own snapshot
  // (read-only), at the same paths as on the host. Gives `uid` its files.
  absl::StatusOr<JailSpec> RestoreJail(const VmSpec& spec, uid_t uid) const {
    const std::string root = spec.dir + "/jail";
    SBX_RETURN_IF_ERROR(MakeRootDir(root, 0755));
    SBX_RETURN_IF_ERROR(ChownTree(VmDir(spec.dir), uid, uid));
    std::vector<std::string> snapshots = {spec.template_snapshot_dir};
    if (JailPath(spec.snapshot_dir) != JailPath(spec.template_snapshot_dir)) {
      snapshots.push_back(spec.snapshot_dir);
      SBX_RETURN_IF_ERROR(ChownTree(spec.snapshot_dir, uid, uid));
    }
    for (size_t i = 1; i < spec.disks.size(); ++i) {
      SBX_RETURN_IF_ERROR(ChownTree(spec.disks[i], uid, uid));
    }
    JailSpec jail = BaseJail(uid, root, LargestFile(spec.disks, snapshots));
    jail.binds.push_back({JailPath(VmDir(spec.dir)), JailPath(VmDir(spec.dir)), true});
    for (const std::string& dir : snapshots) jail.binds.push_back({JailPath(dir), JailPath(dir)});
    // The first disk is the template's shared rootfs (vm.h).
    for (size_t i = 0; i < spec.disks.size(); ++i) {
      jail.binds.push_back({JailPath(spec.disks[i]), JailPath(spec.disks[i]), i > 0});
    }
    return jail;
  }

  const VmmBackendOptions options_;
  const std::string vmm_path_;
  std::unique_ptr<UidPool> uids_;  // null: no jail
};

absl::StatusOr<std::unique_ptr<Vm>> VmmBackend::Start(const VmSpec& spec) {
  SBX_RETURN_IF_ERROR(ValidateVmSpec(spec));
  SBX_RETURN_IF_ERROR(CheckVmm());
  const Clock::time_point start = Clock::now();
  const std::string vm_dir = VmDir(spec.dir);
  if (::mkdir(vm_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoStatus("mkdir", vm_dir, errno);
  }
  SBX_RETURN_IF_ERROR(RemoveStaleSockets(vm_dir));
  RotateLog(vm_dir + "/console.log");
  RotateLog(spec.dir + "/vmm.log");
  SBX_ASSIGN_OR_RETURN(JailId jail, TakeJailId());
  absl::Cleanup release_uid = [&] { ReleaseJailId(jail); };
  SBX_ASSIGN_OR_RETURN(std::unique_ptr<Cgroup> cgroup, MakeCgroup(spec));
  std::vector<std::string> argv = RestoreArgv(vmm_path_, spec);
  argv.insert(argv.end(), options_.extra_vmm_args.begin(), options_.extra_vmm_args.end());
  absl::StatusOr<Spawned> spawned;
  if (jail.pool == nullptr) {
    spawned = Spawn(argv, spec.dir + "/vmm.log", cgroup.get());
  } else {
    absl::StatusOr<JailSpec> jail_spec = RestoreJail(spec, jail.uid);
    spawned = jail_spec.ok()
                  ? SpawnInJail(*std::move(jail_spec), argv, spec.dir + "/vmm.log", cgroup.get())
                  : absl::StatusOr<Spawned>(jail_spec.status());
  }
  if (!spawned.ok()) {
    if (cgroup != nullptr) (void)cgroup->Remove();
    return Annotate(spawned.status(), absl::StrCat("starting the VM of ", spec.dir));
  }
  std::move(release_uid).Cancel();  // the VM gives it back once its VMM ended
  const pid_t pid = spawned->process->pid();
  auto vm = std::make_unique<VmmVm>(spec, options_, std::move(spawned->process),
                                    spawned->start_ticks, std::move(cgroup), jail);
  absl::Status ready = vm->WaitForAgent(spec.ready_timeout_ms);
  const int64_t ready_ms = MsSince(start);
  if (ready.ok()) ready = vm->AfterRestore();
  int64_t attach_ms = 0;
  if (ready.ok() && !spec.attach_device.empty()) {
    const Clock::time_point attach_start = Clock::now();
    ready = vm->AttachDisk();
    attach_ms = MsSince(attach_start);
  }
  if (!ready.ok()) {
    vm->Discard();
    return ready;
  }
  SBX_LOG(INFO) << "sandbox " << spec.dir << ": sbx-vmm " << pid << " restored "
                << spec.snapshot_dir << ", agent answered after " << ready_ms << " ms"
                << (spec.attach_device.empty()
                        ? std::string()
                        : absl::StrCat(", ", spec.attach_device, " attached in ",
                                       attach_ms, " ms"));
  return vm;
}

absl::StatusOr<std::unique_ptr<Vm>> VmmBackend::Adopt(const VmSpec& spec,
                                                      const VmHandle& handle) {
  SBX_RETURN_IF_ERROR(CheckIsDir("sandbox directory", spec.dir));
  SBX_RETURN_IF_ERROR(CheckAbsolute("template snapshot", spec.template_snapshot_dir));
  if (!spec.cgroup_name.empty()) {
    SBX_RETURN_IF_ERROR(Cgroup::ValidateName(spec.cgroup_name));
  }
  if (handle.pid <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("bad pid ", handle.pid));
  }
  // The pidfd first: it holds on to this process, so the checks below are
  // about the process it refers to (a pid recycled after them would show a
  // different start time before).
  UniqueFd pidfd(PidfdOpen(handle.pid));
  if (!pidfd.valid()) {
    if (errno == ESRCH) {
      return absl::NotFoundError(absl::StrCat("process ", handle.pid, " is gone"));
    }
    return ErrnoStatus("pidfd_open", absl::StrCat("pid ", handle.pid), errno);
  }
  absl::StatusOr<uint64_t> ticks = ProcessStartTicks(handle.pid);
  if (!ticks.ok()) {
    return absl::IsNotFound(ticks.status()) ? ticks.status() : Annotate(ticks.status(), "adopt");
  }
  if (*ticks != handle.start_ticks) {
    return absl::NotFoundError(absl::StrCat("process ", handle.pid,
                                            " is another process now (started at tick ",
                                            *ticks, ", not ", handle.start_ticks, ")"));
  }
  SBX_RETURN_IF_ERROR(CheckIsOurVmm(handle.pid, options_.vmm_binary, spec));
  std::unique_ptr<Cgroup> cgroup;
  if (!spec.cgroup_name.empty() && options_.cgroups.has_value()) {
    absl::StatusOr<std::unique_ptr<Cgroup>> adopted =
        Cgroup::Adopt(*options_.cgroups, spec.cgroup_name);
    if (adopted.ok()) {
      cgroup = *std::move(adopted);
    } else {
      // Its group is gone (removed by hand?): a new one, so its quota holds.
      SBX_LOG(WARNING) << "sandbox " << spec.dir << ": " << adopted.status()
                       << "; making a new cgroup for its VMM";
      SBX_ASSIGN_OR_RETURN(cgroup, MakeCgroup(spec));
      if (absl::Status s = cgroup->AddProcess(handle.pid); !s.ok()) {
        (void)cgroup->Remove();  // empty: the VMM never got into it
        return s;
      }
    }
  }
  JailId jail;
  if (uids_ != nullptr) {
    absl::StatusOr<uid_t> uid = ProcessUid(handle.pid);
    if (!uid.ok()) {
      SBX_LOG(WARNING) << "sandbox " << spec.dir << ": the uid of sbx-vmm " << handle.pid
                       << ": " << uid.status();
    } else if (uids_->MarkUsed(*uid)) {
      jail = JailId{uids_.get(), *uid};
    } else {
      SBX_LOG(WARNING) << "sandbox " << spec.dir << ": adopting sbx-vmm " << handle.pid
                       << ", which runs unjailed as uid " << *uid
                       << " (started by a sandboxd with --no-jail)";
    }
  }
  const bool is_child = ParentPid(handle.pid) == ::getpid();
  auto vm = std::make_unique<VmmVm>(
      spec, options_, std::make_unique<VmmProcess>(handle.pid, std::move(pidfd), is_child),
      handle.start_ticks, std::move(cgroup), jail);
  absl::Status ready = vm->WaitForAgent(kAdoptPingMs);
  if (!ready.ok()) {
    // A sandboxd that died during a Sleep may have left it paused.
    absl::StatusOr<std::unique_ptr<vmm::ControlClient>> control =
        vm->Control();
    if (control.ok()) {
      absl::StatusOr<control::v1::Stats> stats = (*control)->Stats();
      if (stats.ok() && stats->state() == control::v1::PAUSED && (*control)->Resume().ok()) {
        SBX_LOG(WARNING) << "sandbox " << spec.dir << ": its VM was paused; resumed it";
        ready = vm->WaitForAgent(kAdoptPingMs);
      }
    }
  }
  if (!ready.ok()) {
    // Ours, but unusable: nothing is left running on error.
    vm->Discard();
    return absl::UnavailableError(absl::StrCat(
        "adopting the VM of ", spec.dir, " (pid ", handle.pid,
        "): its agent does not answer; the VMM was killed: ", ready.message()));
  }
  SBX_LOG(INFO) << "sandbox " << spec.dir << ": adopted sbx-vmm " << handle.pid;
  return vm;
}

absl::StatusOr<TemplateBuild> VmmBackend::BuildTemplate(
    const TemplateSpec& spec, const std::function<void(const std::string&)>& progress) {
  auto say = [&](const std::string& line) {
    SBX_LOG(INFO) << "template " << spec.dir << ": " << line;
    if (progress) progress(line);
  };
  SBX_RETURN_IF_ERROR(CheckAbsolute("template directory", spec.dir));
  if (spec.dir.size() < 2 || spec.dir.back() == '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("template directory '", spec.dir, "' must name a directory"));
  }
  SBX_RETURN_IF_ERROR(CheckIsFile("kernel", spec.kernel));
  SBX_RETURN_IF_ERROR(CheckIsFile("rootfs", spec.rootfs));
  SBX_RETURN_IF_ERROR(CheckFlagSafe("rootfs", spec.rootfs));
  if (spec.vcpus < 1 || spec.vcpus > 32) {
    return absl::InvalidArgumentError(absl::StrCat("vcpus ", spec.vcpus, ": 1 to 32"));
  }
  if (spec.memory_mib < 64 || spec.memory_mib > (uint64_t{1} << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory_mib ", spec.memory_mib, ": 64 to 1048576"));
  }
  if (spec.disk_mib < 16 || spec.disk_mib > (uint64_t{1} << 24)) {
    return absl::InvalidArgumentError(
        absl::StrCat("disk_mib ", spec.disk_mib, ": 16 to 16777216"));
  }
  if (spec.ready_timeout_ms < 1000 || spec.ready_timeout_ms > 86'400'000) {
    return absl::InvalidArgumentError(
        absl::StrCat("ready_timeout_ms ", spec.ready_timeout_ms, ": 1000 to 86400000"));
  }
  SBX_RETURN_IF_ERROR(CheckVmm());
  // The template is built beside its final place and renamed there when
  // complete: a failed build leaves nothing, and no half-built template is
  // ever seen at spec.dir.
  std::error_code ec;
  if (std::filesystem::exists(spec.dir, ec) && !std::filesystem::is_empty(spec.dir, ec)) {
    return absl::AlreadyExistsError(absl::StrCat("template directory ", spec.dir, " exists"));
  }
  const std::string parent = ParentDir(spec.dir);
  std::filesystem::create_directories(parent, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("creating ", parent, ": ", ec.message()));
  }
  std::string tmp = absl::StrCat(spec.dir, ".build-XXXXXX");
  if (::mkdtemp(tmp.data()) == nullptr) return ErrnoStatus("mkdtemp", tmp, errno);
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      if (!dir.empty()) RemoveAll(dir);
    }
  } cleanup{tmp};
  SBX_RETURN_IF_ERROR(CheckSocketDir("template directory", tmp, "/vm"));
  // Searchable by all (the jail's root is in it), like a finished template.
  if (::chmod(tmp.c_str(), 0755) != 0) return ErrnoStatus("chmod", tmp, errno);
  const std::string vm_dir = VmDir(tmp);
  if (::mkdir(vm_dir.c_str(), 0700) != 0) return ErrnoStatus("mkdir", vm_dir, errno);
  const std::string disk = tmp + "/disk.img";
  {
    UniqueFd fd(::open(disk.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640));
    if (!fd.valid()) return ErrnoStatus("open", disk, errno);
    if (::ftruncate(fd.get(), static_cast<off_t>(spec.disk_mib << 20)) != 0) {
      return ErrnoStatus("ftruncate", disk, errno);
    }
  }
  // Jailed: the boot's own id, its directory and disk slot, the kernel and
  // rootfs read-only (and the PVM module's directory: sbx-vmm adapts the
  // guest's command line to PVM hosts). A finished template is root's.
  SBX_ASSIGN_OR_RETURN(JailId jail, TakeJailId());
  absl::Cleanup release_uid = [&] { ReleaseJailId(jail); };
  std::optional<JailSpec> jail_spec;
  if (jail.pool != nullptr) {
    const std::string root = tmp + "/jail";
    SBX_RETURN_IF_ERROR(MakeRootDir(root, 0755));
    SBX_RETURN_IF_ERROR(ChownTree(vm_dir, jail.uid, jail.uid));
    SBX_RETURN_IF_ERROR(ChownTree(disk, jail.uid, jail.uid));
    jail_spec = BaseJail(jail.uid, root, std::max(spec.disk_mib, spec.memory_mib) << 20);
    jail_spec->binds.push_back({JailPath(vm_dir), JailPath(vm_dir), true});
    jail_spec->binds.push_back({JailPath(disk), JailPath(disk), true});
    jail_spec->binds.push_back({JailPath(spec.kernel), JailPath(spec.kernel)});
    jail_spec->binds.push_back({JailPath(spec.rootfs), JailPath(spec.rootfs)});
    if (struct stat st; ::stat("/sys/module/kvm_pvm", &st) == 0) {
      jail_spec->binds.push_back({"/sys/module/kvm_pvm", "/sys/module/kvm_pvm"});
    }
  }
  const Clock::time_point start = Clock::now();
  say(absl::StrCat("booting ", spec.kernel, " with ", spec.rootfs, " (", spec.vcpus,
                   " vCPU, ", spec.memory_mib, " MiB RAM, disks up to ", spec.disk_mib,
                   " MiB)..."));
  const std::vector<std::string> argv =
      TemplateArgv(vmm_path_, spec, tmp, options_.template_working_set_ms);
  SBX_ASSIGN_OR_RETURN(Spawned spawned,
                       jail_spec.has_value()
                           ? SpawnInJail(*std::move(jail_spec), argv, tmp + "/vmm.log", nullptr)
                           : Spawn(argv, tmp + "/vmm.log", nullptr));
  VmmProcess& vmm = *spawned.process;
  // sbx-vmm stops waiting for the agent itself (--ready-timeout); this
  // bound is for a VMM that hangs after that (snapshot, working set).
  const int64_t limit_ms = static_cast<int64_t>(spec.ready_timeout_ms) + 600'000;
  const std::string vmstate = vm_dir + "/snapshot/vmstate";
  bool snapshot_seen = false;
  int64_t next_report_ms = static_cast<int64_t>(options_.progress_interval_ms);
  std::string how;
  while (!vmm.Wait(500, &how)) {
    const int64_t elapsed = MsSince(start);
    if (elapsed > limit_ms) {
      vmm.Kill();
      return absl::DeadlineExceededError(absl::StrCat(
          "template ", spec.dir, ": sbx-vmm still ran after ", elapsed / 1000,
          " s; killed it", Diagnostics(tmp, tmp)));
    }
    if (!snapshot_seen && ::access(vmstate.c_str(), F_OK) == 0) {
      snapshot_seen = true;
      say(absl::StrCat("snapshot written after ", elapsed / 1000, " s"));
      if (options_.template_working_set_ms > 0) {
        say(absl::StrCat("recording the working set (", options_.template_working_set_ms,
                         " ms of guest time)..."));
      }
    }
    if (elapsed >= next_report_ms) {
      next_report_ms += static_cast<int64_t>(options_.progress_interval_ms);
      if (!snapshot_seen) {
        say(absl::StrCat("waiting for the guest agent (", elapsed / 1000, " s)"));
      }
    }
  }
  const double seconds = static_cast<double>(MsSince(start)) / 1000.0;
  if (const int status = vmm.exit_status(); status != 0) {
    const std::string message = absl::StrCat("template ", spec.dir, ": ", how, Diagnostics(tmp, tmp));
    switch (status) {
      case 6: return absl::DeadlineExceededError(message);
      case 2: return absl::InvalidArgumentError(message);
      default: return absl::InternalError(message);
    }
  }
  if (::access(vmstate.c_str(), F_OK) != 0) {
    return absl::InternalError(absl::StrCat("template ", spec.dir, ": sbx-vmm exited 0 but ",
                                            vmstate, " is missing", Diagnostics(tmp, tmp)));
  }
  if (!snapshot_seen) say(absl::StrCat("snapshot written after ", static_cast<int>(seconds), " s"));
  (void)::unlink((vm_dir + "/vsock.sock").c_str());
  SBX_RETURN_IF_ERROR(MoveVmmDir(vm_dir + "/snapshot", tmp + "/snapshot"));
  if (jail.pool != nullptr) {
    // Every sandbox's VMM reads the snapshot (files 0644, directories
    // 0755: the state directory above is root's alone); none writes it.
    for (const std::string& path : {tmp + "/snapshot", disk, vm_dir}) {
      SBX_RETURN_IF_ERROR(ChownTree(path, ::geteuid(), ::getegid()));
    }
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(tmp + "/snapshot", ec)) {
      const std::string path = e.path().string();
      struct stat st;
      if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
        return absl::DataLossError(absl::StrCat("template ", spec.dir, ": ", path,
                                                " is not a regular file"));
      }
      if (::chmod(path.c_str(), 0644) != 0) return ErrnoStatus("chmod", path, errno);
    }
    if (ec) return absl::InternalError(absl::StrCat("listing ", tmp, "/snapshot: ", ec.message()));
    if (::chmod((tmp + "/snapshot").c_str(), 0755) != 0) {
      return ErrnoStatus("chmod", tmp + "/snapshot", errno);
    }
    RemoveAll(tmp + "/jail");
  }
  if (::rename(tmp.c_str(), spec.dir.c_str()) != 0) {
    if (errno == ENOTEMPTY || errno == EEXIST) {
      return absl::AlreadyExistsError(absl::StrCat("template directory ", spec.dir, " exists"));
    }
    return ErrnoStatus("rename", absl::StrCat(tmp, " to ", spec.dir), errno);
  }
  cleanup.dir.clear();
  SBX_RETURN_IF_ERROR(FsyncDir(parent));
  say(absl::StrCat("template ready in ", static_cast<int>(seconds), " s"));
  TemplateBuild build;
  build.snapshot_dir = spec.dir + "/snapshot";
  build.disk = spec.dir + "/disk.img";
  build.disk_slot_bytes = spec.disk_mib << 20;
  build.seconds = seconds;
  return build;
}

}  // namespace

std::unique_ptr<VmBackend> NewVmmBackend(VmmBackendOptions options) {
  return std::make_unique<VmmBackend>(std::move(options));
}

absl::Status MakeSandboxDisk(const std::string& path, uint64_t slot_bytes, uint64_t fs_mib) {
  SBX_RETURN_IF_ERROR(CheckAbsolute("sandbox disk", path));
  SBX_RETURN_IF_ERROR(CheckFlagSafe("sandbox disk", path));
  if (slot_bytes == 0 || slot_bytes % 512 != 0 ||
      slot_bytes > static_cast<uint64_t>(std::numeric_limits<off_t>::max())) {
    return absl::InvalidArgumentError(
        absl::StrCat("disk slot of ", slot_bytes, " bytes: not a positive multiple of 512"));
  }
  if (fs_mib < 16 || fs_mib > (slot_bytes >> 20)) {
    return absl::InvalidArgumentError(absl::StrCat("a ", fs_mib, " MiB disk: 16 MiB to the slot's ",
                                                   slot_bytes >> 20, " MiB"));
  }
  SBX_ASSIGN_OR_RETURN(const std::string mkfs, FindMkfsExt4());
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640));
  if (!fd.valid()) {
    if (errno == EEXIST) {
      return absl::AlreadyExistsError(absl::StrCat("sandbox disk ", path, " exists"));
    }
    return ErrnoStatus("open", path, errno);
  }
  // From here on a failure removes the file.
  struct RemoveOnError {
    const std::string& path;
    bool keep = false;
    ~RemoveOnError() {
      if (!keep) ::unlink(path.c_str());
    }
  } remove_on_error{path};
  if (::ftruncate(fd.get(), static_cast<off_t>(slot_bytes)) != 0) {
    return ErrnoStatus("ftruncate", path, errno);
  }
  // An explicit size: the filesystem is the quota, not the slot. 4 KiB
  // blocks whatever the size (mke2fs picks 1 KiB for small ones); no
  // blocks reserved for root (everything in a sandbox runs as root); the
  // journal stays (crash safety). On a regular file mke2fs discards by
  // punching holes, which zeroes: the inode tables count as initialized
  // and the guest kernel does not zero them later.
  SBX_ASSIGN_OR_RETURN(
      ToolResult made,
      RunTool({mkfs, "-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0", "-L", "sbx-upper", "-E",
               "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0", path,
               absl::StrCat(fs_mib, "M")}));
  if (made.status != 0) {
    return absl::InternalError(absl::StrCat(
        "mkfs.ext4 of sandbox disk ", path, " (", fs_mib, " MiB) ",
        made.status < 0 ? std::string("was killed by a signal")
                        : absl::StrCat("exited with status ", made.status),
        ": ", made.output));
  }
  // mke2fs keeps the file's size; make sure of it (the guest knows the
  // slot's capacity, and sbx-vmm refuses a disk of another size).
  if (::ftruncate(fd.get(), static_cast<off_t>(slot_bytes)) != 0) {
    return ErrnoStatus("ftruncate", path, errno);
  }
  if (::fsync(fd.get()) != 0) return ErrnoStatus("fsync", path, errno);
  remove_on_error.keep = true;
  return absl::OkStatus();
}

std::vector<std::string> RestoreArgv(const std::string& vmm_binary, const VmSpec& spec) {
  std::vector<std::string> argv = {vmm_binary, "--restore", spec.snapshot_dir};
  for (const std::string& disk : spec.disks) {
    argv.push_back("--disk");
    argv.push_back(disk);
  }
  for (const char* flag : {"--vsock", "vsock.sock", "--control", "control.sock",
                           "--console", "console.log"}) {
    if (flag[0] == '-') {
      argv.emplace_back(flag);
    } else {
      argv.push_back(absl::StrCat(VmDir(spec.dir), "/", flag));
    }
  }
  return argv;
}

std::vector<std::string> TemplateArgv(const std::string& vmm_binary,
                                      const TemplateSpec& spec, const std::string& dir,
                                      uint64_t working_set_ms) {
  // sbx-vmm takes whole seconds; never less than asked.
  const uint64_t ready_s = std::max<uint64_t>(1, (spec.ready_timeout_ms + 999) / 1000);
  std::vector<std::string> argv = {
      vmm_binary,
      "--kernel", spec.kernel,
      "--rootfs", spec.rootfs,
      "--disk", dir + "/disk.img",
      "--cpus", absl::StrCat(spec.vcpus),
      "--memory-mib", absl::StrCat(spec.memory_mib),
      // The writable disk's slot (/dev/vdb) stays untouched: each sandbox
      // restored from the template attaches its own disk there
      // (AttachDisk; guest/README.md).
      "--cmdline", "sbx.upper=late",
      "--console", VmDir(dir) + "/console.log",
      "--vsock", VmDir(dir) + "/vsock.sock",
      "--snapshot-when-ready", VmDir(dir) + "/snapshot",
      "--ready-timeout", absl::StrCat(ready_s),
  };
  if (working_set_ms > 0) {
    argv.push_back("--record-working-set");
    argv.push_back(absl::StrCat(working_set_ms));
  }
  return argv;
}

absl::StatusOr<uint64_t> ParseStartTicks(std::string_view stat) {
  // "PID (COMM) STATE PPID ...": field 3 is the first after COMM's ')'.
  const size_t close = stat.rfind(')');
  if (close == std::string_view::npos) {
    return absl::InvalidArgumentError("/proc/PID/stat without a command name");
  }
  std::vector<std::string> fields =
      absl::StrSplit(std::string(stat.substr(close + 1)), ' ', absl::SkipWhitespace());
  constexpr size_t kStartTime = 22 - 3;  // field 22, counted from field 3
  uint64_t ticks = 0;
  if (fields.size() <= kStartTime || !absl::SimpleAtoi(fields[kStartTime], &ticks)) {
    return absl::InvalidArgumentError("/proc/PID/stat without a start time (field 22)");
  }
  return ticks;
}

absl::StatusOr<uint64_t> ProcessStartTicks(pid_t pid) {
  const std::string path = absl::StrCat("/proc/", pid, "/stat");
  SBX_ASSIGN_OR_RETURN(std::string stat, ReadProcFile(path));
  absl::StatusOr<uint64_t> ticks = ParseStartTicks(stat);
  if (!ticks.ok()) return Annotate(ticks.status(), path);
  return ticks;
}

std::string DescribeExit(int how, int status) {
  switch (how) {
    case CLD_EXITED:
      return absl::StrCat("exited with status ", status);
    case CLD_KILLED:
    case CLD_DUMPED: {
      const char* name = ::sigabbrev_np(status);
      return absl::StrCat("killed by signal ", status,
                          name != nullptr ? absl::StrCat(" (SIG", name, ")") : "",
                          how == CLD_DUMPED ? ", core dumped" : "");
    }
    default:
      return absl::StrCat("ended (si_code ", how, ", status ", status, ")");
  }
}

}  // namespace sbx::sandboxd
