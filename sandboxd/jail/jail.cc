#include "sandboxd/jail/jail.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/capability.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/pidfd.h"
#include "base/status.h"
#include "base/status_macros.h"

namespace sbx::sandboxd {
namespace {

#ifndef CLONE_PIDFD
constexpr uint64_t CLONE_PIDFD = 0x00001000;  // Linux 5.2
#endif
#ifndef PR_CAP_AMBIENT
constexpr int PR_CAP_AMBIENT = 47;
constexpr unsigned long PR_CAP_AMBIENT_CLEAR_ALL = 4;
#endif


// capset(2)'s structures (<linux/capability.h>, version 3: two 32-bit
// words per set), spelled out: libcap's <sys/capability.h> and the kernel
// header do not mix.
constexpr uint32_t kCapabilityVersion3 = 0x20080522;
struct CapHeader {
  uint32_t version;
  int pid;
};
struct CapData {
  uint32_t effective;
  uint32_t permitted;
  uint32_t inheritable;
};

// The child's setup steps, reported through the error pipe.
enum class Step : int32_t {
  kSignals = 1,
  kSetsid,
  kStdio,
  kMakePrivate,
  kBindRoot,
  kMount,    // index: into ChildPlan::mounts
  kRemount,  // index: into ChildPlan::mounts
  kMountProc,
  kMountDev,
  kMknod,     // index: into ChildPlan::devices
  kChownDev,  // index: into ChildPlan::devices
  kRemountDev,
  kRemountRoot,
  kChdirRoot,
  kPivotRoot,
  kUmountOldRoot,
  kChdirSlash,
  kRlimit,  // index: into ChildPlan::rlimits
  kCapBsetDrop,
  kAmbientClear,
  kSetgroups,
  kSetresgid,
  kSetresuid,
  kCapset,
  kNoNewPrivs,
  kExecve,
};

struct ChildError {
  int32_t step;
  int32_t index;
  int32_t err;
};

// One bind mount as the child makes it: absolute host paths, then a
// remount that applies `flags` (a bind mount ignores them on creation).
struct MountOp {
  const char* source;
  const char* target;  // root_dir + the target inside
  unsigned long flags;
};

// One device node the child makes in its own /dev.
struct DeviceOp {
  const char* path;  // root_dir + "/dev/NAME"
  mode_t type;       // S_IFCHR or S_IFBLK
  dev_t rdev;
};

struct RlimitOp {
  __rlimit_resource_t resource;
  rlim_t value;
};

// Everything the child reads, prepared before clone: pointers into
// strings that outlive the child's setup (the parent waits for exec).
struct ChildPlan {
  int stdin_fd, stdout_fd, stderr_fd;
  int error_fd;
  int go_fd;  // -1: no before_setup to wait for
  const char* root_dir;
  std::vector<MountOp> mounts;
  const char* proc_target = nullptr;  // null: no /proc
  const char* dev_target = nullptr;   // null: no /dev
  std::vector<DeviceOp> devices;
  std::vector<RlimitOp> rlimits;
  int last_cap;
  uid_t uid;
  gid_t gid;
  std::vector<char*> argv;
  std::vector<char*> envp;
};

// The child after clone: async-signal-safe calls only (raw system calls:
// glibc's setresuid & co. would try to broadcast to the parent's threads,
// which do not exist here), no allocation, no logging.
[[noreturn]] void Fail(const ChildPlan& plan, Step step, int index) {
  const ChildError e{static_cast<int32_t>(step), index, errno};
  (void)!::write(plan.error_fd, &e, sizeof(e));
  ::_exit(127);
}

[[noreturn]] void RunChild(const ChildPlan& plan) {
  // sandboxd's handlers must not run here, and its ignored signals must not
  // stay ignored in the program; all signals are blocked since before clone.
  struct sigaction dfl;
  ::memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    (void)::sigaction(sig, &dfl, nullptr);  // EINVAL for glibc's own: fine
  }
  sigset_t none;
  sigemptyset(&none);
  if (::sigprocmask(SIG_SETMASK, &none, nullptr) != 0) Fail(plan, Step::kSignals, 0);
  if (plan.go_fd >= 0) {
    char c;
    ssize_t n;
    do {
      n = ::read(plan.go_fd, &c, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1) ::_exit(127);  // the parent gave up on us
  }
  if (::setsid() < 0) Fail(plan, Step::kSetsid, 0);

  const int from[3] = {plan.stdin_fd, plan.stdout_fd, plan.stderr_fd};
  for (int target = 0; target < 3; ++target) {
    if (from[target] == target) {
      if (::fcntl(target, F_SETFD, 0) != 0) Fail(plan, Step::kStdio, target);
    } else if (::dup2(from[target], target) < 0) {
      Fail(plan, Step::kStdio, target);
    }
  }
  // Nothing else of the parent's goes along, O_CLOEXEC or not (the error
  // pipe is closed by execve itself).
  ::syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC);

  // Mounts: nothing made here propagates back to the host.
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    Fail(plan, Step::kMakePrivate, 0);
  }
  // pivot_root needs the new root to be a mount point.
  if (::mount(plan.root_dir, plan.root_dir, nullptr, MS_BIND, nullptr) != 0) {
    Fail(plan, Step::kBindRoot, 0);
  }
  for (size_t i = 0; i < plan.mounts.size(); ++i) {
    const MountOp& m = plan.mounts[i];
    if (::mount(m.source, m.target, nullptr, MS_BIND, nullptr) != 0) {
      Fail(plan, Step::kMount, static_cast<int>(i));
    }
    if (::mount(nullptr, m.target, nullptr, MS_REMOUNT | MS_BIND | m.flags, nullptr) != 0) {
      Fail(plan, Step::kRemount, static_cast<int>(i));
    }
  }
  if (plan.proc_target != nullptr &&
      ::mount("proc", plan.proc_target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0) {
    Fail(plan, Step::kMountProc, 0);
  }
  if (plan.dev_target != nullptr) {
    // A /dev of its own: a tiny tmpfs holding only the listed nodes, owned
    // by the jail's ids (the host's node may be root's, mode 0600), then
    // read-only. The only mount without nodev.
    if (::mount("tmpfs", plan.dev_target, "tmpfs", MS_NOSUID | MS_NOEXEC,
                "mode=0755,size=16k,nr_inodes=64") != 0) {
      Fail(plan, Step::kMountDev, 0);
    }
    for (size_t i = 0; i < plan.devices.size(); ++i) {
      const DeviceOp& d = plan.devices[i];
      if (::mknod(d.path, d.type | 0600, d.rdev) != 0) Fail(plan, Step::kMknod, static_cast<int>(i));
      if (::chown(d.path, plan.uid, plan.gid) != 0) Fail(plan, Step::kChownDev, static_cast<int>(i));
    }
    if (::mount(nullptr, plan.dev_target, nullptr,
                MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC, "mode=0755") != 0) {
      Fail(plan, Step::kRemountDev, 0);
    }
  }
  if (::mount(nullptr, plan.root_dir, nullptr,
              MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
              nullptr) != 0) {
    Fail(plan, Step::kRemountRoot, 0);
  }
  // pivot_root(".", ".") stacks the old root on top of the new one; the
  // detached unmount then drops it (pivot_root(2), NOTES).
  if (::chdir(plan.root_dir) != 0) Fail(plan, Step::kChdirRoot, 0);
  if (::syscall(SYS_pivot_root, ".", ".") != 0) Fail(plan, Step::kPivotRoot, 0);
  if (::umount2(".", MNT_DETACH) != 0) Fail(plan, Step::kUmountOldRoot, 0);
  if (::chdir("/") != 0) Fail(plan, Step::kChdirSlash, 0);

  for (size_t i = 0; i < plan.rlimits.size(); ++i) {
    const struct rlimit limit = {plan.rlimits[i].value, plan.rlimits[i].value};
    if (::setrlimit(plan.rlimits[i].resource, &limit) != 0) {
      Fail(plan, Step::kRlimit, static_cast<int>(i));
    }
  }

  // Capabilities: the bounding set needs CAP_SETPCAP, so before the uid
  // switch; the switch to non-zero uids clears effective and permitted;
  // capset clears inheritable (and whatever is left).
  for (int cap = 0; cap <= plan.last_cap; ++cap) {
    if (::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) Fail(plan, Step::kCapBsetDrop, cap);
  }
  if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) {
    Fail(plan, Step::kAmbientClear, 0);
  }
  if (::syscall(SYS_setgroups, 0, nullptr) != 0) Fail(plan, Step::kSetgroups, 0);
  if (::syscall(SYS_setresgid, plan.gid, plan.gid, plan.gid) != 0) Fail(plan, Step::kSetresgid, 0);
  if (::syscall(SYS_setresuid, plan.uid, plan.uid, plan.uid) != 0) Fail(plan, Step::kSetresuid, 0);
  CapHeader header{kCapabilityVersion3, 0};
  CapData data[2];
  ::memset(data, 0, sizeof(data));
  if (::syscall(SYS_capset, &header, data) != 0) Fail(plan, Step::kCapset, 0);
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) Fail(plan, Step::kNoNewPrivs, 0);

  ::execve(plan.argv[0], plan.argv.data(), const_cast<char* const*>(plan.envp.data()));
  Fail(plan, Step::kExecve, 0);
}

// --- the parent's preparation ---

// An absolute path without ".", ".." or empty components (and not "/").
absl::Status CheckJailPath(std::string_view what, const std::string& path) {
  if (path.empty() || path[0] != '/' || path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(what), " '", path, "' is not an absolute path"));
  }
  if (path == "/") {
    return absl::InvalidArgumentError(absl::StrCat(std::string(what), " may not be /"));
  }
  for (absl::string_view part : absl::StrSplit(path.substr(1), '/')) {
    if (part.empty() || part == "." || part == "..") {
      return absl::InvalidArgumentError(absl::StrCat(
          std::string(what), " '", path, "' must be normalized (no '', '.' or '..' parts)"));
    }
  }
  return absl::OkStatus();
}

// True when `inner` is `outer` or lies below it.
bool IsUnder(const std::string& inner, const std::string& outer) {
  return inner == outer || (inner.size() > outer.size() && inner.starts_with(outer) &&
                            inner[outer.size()] == '/');
}

// Makes `target` (a checked jail path) exist under root_fd as a directory
// or a regular file, creating what is missing (as root, mode 0755/0644),
// never following a symlink.
absl::Status EnsureMountPoint(int root_fd, const std::string& root_dir,
                              const std::string& target, bool dir) {
  std::vector<std::string> parts = absl::StrSplit(target.substr(1), '/');
  UniqueFd owned;
  int fd = root_fd;
  std::string so_far = root_dir;
  for (size_t i = 0; i < parts.size(); ++i) {
    const bool last = i + 1 == parts.size();
    const bool want_dir = !last || dir;
    const char* name = parts[i].c_str();
    so_far += "/" + parts[i];
    struct stat st;
    if (::fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno != ENOENT) return ErrnoStatus("stat", so_far, errno);
      const int rc = want_dir ? ::mkdirat(fd, name, 0755) : ::mknodat(fd, name, S_IFREG | 0644, 0);
      if (rc != 0 && errno != EEXIST) {
        return ErrnoStatus(want_dir ? "mkdir" : "create", so_far, errno);
      }
      if (::fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        return ErrnoStatus("stat", so_far, errno);
      }
    }
    if (want_dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "mount point ", so_far, " exists and is not a ",
          want_dir ? "directory" : "regular file", S_ISLNK(st.st_mode) ? " (a symlink)" : ""));
    }
    if (!last) {
      UniqueFd next(::openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!next.valid()) return ErrnoStatus("open", so_far, errno);
      owned = std::move(next);
      fd = owned.get();
    }
  }
  return absl::OkStatus();
}

std::string OctalMode(mode_t mode) {
  char buf[16];
  snprintf(buf, sizeof(buf), "%o", static_cast<unsigned>(mode & 07777));
  return buf;
}

int LastCap() {
  const int bits = cap_max_bits();  // libcap: from the kernel, not the header
  return bits > 0 ? bits - 1 : 40;
}

// What a child's step means, for the error message.
std::string StepName(const ChildError& e, const JailSpec& spec,
                     const std::vector<std::string>& mount_names,
                     const std::vector<std::string>& rlimit_names) {
  auto mount_name = [&]() -> std::string {
    if (e.index >= 0 && static_cast<size_t>(e.index) < mount_names.size()) {
      return mount_names[static_cast<size_t>(e.index)];
    }
    return "?";
  };
  switch (static_cast<Step>(e.step)) {
    case Step::kSignals: return "resetting signals";
    case Step::kSetsid: return "setsid";
    case Step::kStdio: return absl::StrCat("dup2 onto fd ", e.index);
    case Step::kMakePrivate: return "making / private (mount MS_REC|MS_PRIVATE)";
    case Step::kBindRoot: return absl::StrCat("bind-mounting root_dir ", spec.root_dir);
    case Step::kMount: return absl::StrCat("bind-mounting ", mount_name());
    case Step::kRemount: return absl::StrCat("applying the mount flags of ", mount_name());
    case Step::kMountProc: return "mounting proc at /proc";
    case Step::kMountDev: return "mounting a tmpfs at /dev";
    case Step::kMknod:
      return absl::StrCat("mknod ", e.index >= 0 && static_cast<size_t>(e.index) < spec.devices.size()
                                        ? spec.devices[static_cast<size_t>(e.index)]
                                        : "?");
    case Step::kChownDev:
      return absl::StrCat("chown ", e.index >= 0 && static_cast<size_t>(e.index) < spec.devices.size()
                                        ? spec.devices[static_cast<size_t>(e.index)]
                                        : "?",
                          " to ", spec.uid, ":", spec.gid);
    case Step::kRemountDev: return "remounting /dev read-only";
    case Step::kRemountRoot: return absl::StrCat("remounting root_dir ", spec.root_dir, " read-only");
    case Step::kChdirRoot: return absl::StrCat("chdir ", spec.root_dir);
    case Step::kPivotRoot: return absl::StrCat("pivot_root into ", spec.root_dir);
    case Step::kUmountOldRoot: return "unmounting the old root";
    case Step::kChdirSlash: return "chdir /";
    case Step::kRlimit:
      return absl::StrCat("setrlimit ",
                          e.index >= 0 && static_cast<size_t>(e.index) < rlimit_names.size()
                              ? rlimit_names[static_cast<size_t>(e.index)]
                              : "?");
    case Step::kCapBsetDrop: return absl::StrCat("PR_CAPBSET_DROP of capability ", e.index);
    case Step::kAmbientClear: return "PR_CAP_AMBIENT_CLEAR_ALL";
    case Step::kSetgroups: return "setgroups (dropping supplementary groups)";
    case Step::kSetresgid: return absl::StrCat("setresgid ", spec.gid);
    case Step::kSetresuid: return absl::StrCat("setresuid ", spec.uid);
    case Step::kCapset: return "capset (clearing all capabilities)";
    case Step::kNoNewPrivs: return "PR_SET_NO_NEW_PRIVS";
    case Step::kExecve: return absl::StrCat("execve ", spec.argv[0]);
  }
  return absl::StrCat("step ", e.step);
}

absl::StatusOr<ProcessExit> Reap(int pidfd, int options) {
  siginfo_t info;
  for (;;) {
    ::memset(&info, 0, sizeof(info));
    if (::waitid(P_PIDFD, static_cast<id_t>(pidfd), &info, WEXITED | options) == 0) break;
    if (errno != EINTR) return ErrnoStatus("waitid", "the jailed process", errno);
  }
  ProcessExit exit;
  exit.signaled = info.si_code != CLD_EXITED;
  exit.value = info.si_status;
  return exit;
}

}  // namespace

std::string ProcessExit::ToString() const {
  if (signaled) return absl::StrCat("killed by signal ", value, " (", strsignal(value), ")");
  return absl::StrCat("exited with status ", value);
}

absl::Status JailedProcess::Kill(int signal) {
  if (PidfdSendSignal(pidfd_.get(), signal) != 0) {
    return ErrnoStatus("pidfd_send_signal", absl::StrCat("pid ", pid_), errno);
  }
  return absl::OkStatus();
}

absl::StatusOr<ProcessExit> JailedProcess::Wait() { return Reap(pidfd_.get(), 0); }

absl::StatusOr<ProcessExit> JailedProcess::WaitFor(std::chrono::milliseconds timeout) {
  struct pollfd p = {pidfd_.get(), POLLIN, 0};
  int rc;
  do {
    rc = ::poll(&p, 1, static_cast<int>(timeout.count()));
  } while (rc < 0 && errno == EINTR);  // a restarted poll waits afresh: good enough
  if (rc < 0) return ErrnoStatus("poll", "the jailed process's pidfd", errno);
  if (rc == 0) {
    return absl::DeadlineExceededError(
        absl::StrCat("pid ", pid_, " still runs after ", timeout.count(), " ms"));
  }
  return Reap(pidfd_.get(), 0);
}

absl::StatusOr<JailedProcess> SpawnJailed(const JailSpec& spec) {
  // --- check the spec ---
  if (spec.argv.empty()) return absl::InvalidArgumentError("jail: argv is empty");
  SBX_RETURN_IF_ERROR(CheckJailPath("jail program argv[0]", spec.argv[0]));
  if (spec.uid == 0 || spec.gid == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "jail: uid ", spec.uid, " / gid ", spec.gid, ": the jail runs only unprivileged ids"));
  }
  SBX_RETURN_IF_ERROR(CheckJailPath("jail root_dir", spec.root_dir));
  struct stat root_st;
  if (::lstat(spec.root_dir.c_str(), &root_st) != 0) {
    return Annotate(ErrnoStatus("stat", spec.root_dir, errno), "jail root_dir");
  }
  if (!S_ISDIR(root_st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("jail root_dir ", spec.root_dir, " is not a directory"));
  }
  if (root_st.st_uid != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "jail root_dir ", spec.root_dir, " is owned by uid ", root_st.st_uid, ", not root"));
  }
  if ((root_st.st_mode & S_IXOTH) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "jail root_dir ", spec.root_dir, " is not searchable by others (mode 0",
        OctalMode(root_st.st_mode), "): uid ", spec.uid,
        " could not reach anything in it"));
  }
  std::vector<std::string> targets;  // inside the jail, to refuse nesting
  std::vector<bool> target_is_dir;
  for (const BindMount& b : spec.binds) {
    SBX_RETURN_IF_ERROR(CheckJailPath("jail bind source", b.source));
    SBX_RETURN_IF_ERROR(CheckJailPath("jail bind target", b.target));
    struct stat st;
    if (::stat(b.source.c_str(), &st) != 0) {
      return Annotate(ErrnoStatus("stat", b.source, errno), "jail bind source");
    }
    if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "jail bind source ", b.source, " is neither a file nor a directory (devices go in `devices`)"));
    }
    targets.push_back(b.target);
    target_is_dir.push_back(S_ISDIR(st.st_mode));
  }
  std::vector<DeviceOp> device_ops;
  for (const std::string& dev : spec.devices) {
    SBX_RETURN_IF_ERROR(CheckJailPath("jail device", dev));
    if (!dev.starts_with("/dev/") || dev.find('/', 5) != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("jail device ", dev, " is not /dev/NAME"));
    }
    struct stat st;
    if (::stat(dev.c_str(), &st) != 0) {
      return Annotate(ErrnoStatus("stat", dev, errno), "jail device");
    }
    if (!S_ISCHR(st.st_mode) && !S_ISBLK(st.st_mode)) {
      return absl::InvalidArgumentError(absl::StrCat("jail device ", dev, " is not a device node"));
    }
    if (std::count(spec.devices.begin(), spec.devices.end(), dev) > 1) {
      return absl::InvalidArgumentError(absl::StrCat("jail device ", dev, " listed twice"));
    }
    device_ops.push_back({nullptr, static_cast<mode_t>(st.st_mode & S_IFMT), st.st_rdev});
  }
  if (!spec.devices.empty()) {
    targets.push_back("/dev");
    target_is_dir.push_back(true);
  }
  if (spec.mount_proc) {
    targets.push_back("/proc");
    target_is_dir.push_back(true);
  }
  // A mount point under another mount would be created in root_dir and then
  // hidden by the outer mount: refused rather than half-done.
  for (size_t i = 0; i < targets.size(); ++i) {
    for (size_t j = 0; j < targets.size(); ++j) {
      if (i != j && IsUnder(targets[i], targets[j])) {
        return absl::InvalidArgumentError(absl::StrCat(
            "jail mount target ", targets[i], " lies inside mount target ", targets[j],
            ": nested mounts are not supported"));
      }
    }
  }

  // --- create the mount points ---
  UniqueFd root_fd(::open(spec.root_dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!root_fd.valid()) return Annotate(ErrnoStatus("open", spec.root_dir, errno), "jail root_dir");
  for (size_t i = 0; i < targets.size(); ++i) {
    SBX_RETURN_IF_ERROR(
        EnsureMountPoint(root_fd.get(), spec.root_dir, targets[i], target_is_dir[i]));
  }

  // --- everything the child needs ---
  std::vector<std::string> full_targets;  // stable: reserved before pointers are taken
  full_targets.reserve(targets.size());
  for (const std::string& t : targets) full_targets.push_back(spec.root_dir + t);
  ChildPlan plan;
  std::vector<std::string> mount_names;
  for (size_t i = 0; i < spec.binds.size(); ++i) {
    const BindMount& b = spec.binds[i];
    unsigned long flags = MS_NOSUID | MS_NODEV;
    if (!b.exec) flags |= MS_NOEXEC;
    if (!b.writable) flags |= MS_RDONLY;
    plan.mounts.push_back({b.source.c_str(), full_targets[i].c_str(), flags});
    mount_names.push_back(absl::StrCat(b.source, " at ", b.target, b.writable ? " (rw)" : " (ro)"));
  }
  // /dev's mount point follows the binds', then /proc's.
  std::vector<std::string> device_paths;  // stable: reserved before pointers are taken
  device_paths.reserve(spec.devices.size());
  if (!spec.devices.empty()) {
    plan.dev_target = full_targets[spec.binds.size()].c_str();
    for (size_t i = 0; i < spec.devices.size(); ++i) {
      device_paths.push_back(spec.root_dir + spec.devices[i]);
      device_ops[i].path = device_paths.back().c_str();
    }
    plan.devices = device_ops;
  }
  if (spec.mount_proc) plan.proc_target = full_targets.back().c_str();
  std::vector<std::string> rlimit_names;
  if (spec.max_open_files) {
    plan.rlimits.push_back({RLIMIT_NOFILE, *spec.max_open_files});
    rlimit_names.push_back(absl::StrCat("RLIMIT_NOFILE ", *spec.max_open_files));
  }
  if (spec.max_file_size) {
    plan.rlimits.push_back({RLIMIT_FSIZE, *spec.max_file_size});
    rlimit_names.push_back(absl::StrCat("RLIMIT_FSIZE ", *spec.max_file_size));
  }
  if (spec.max_processes) {
    plan.rlimits.push_back({RLIMIT_NPROC, *spec.max_processes});
    rlimit_names.push_back(absl::StrCat("RLIMIT_NPROC ", *spec.max_processes));
  }
  plan.root_dir = spec.root_dir.c_str();
  plan.last_cap = LastCap();
  plan.uid = spec.uid;
  plan.gid = spec.gid;
  for (const std::string& a : spec.argv) plan.argv.push_back(const_cast<char*>(a.c_str()));
  plan.argv.push_back(nullptr);
  for (const std::string& e : spec.env) plan.envp.push_back(const_cast<char*>(e.c_str()));
  plan.envp.push_back(nullptr);

  UniqueFd null_fd(::open("/dev/null", O_RDWR | O_CLOEXEC));
  if (!null_fd.valid()) return ErrnoStatus("open", "/dev/null", errno);
  plan.stdin_fd = null_fd.get();
  plan.stdout_fd = spec.stdout_fd >= 0 ? spec.stdout_fd : null_fd.get();
  plan.stderr_fd = spec.stderr_fd >= 0 ? spec.stderr_fd : null_fd.get();
  int err_pipe[2];
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) return ErrnoStatus("pipe2", errno);
  UniqueFd err_read(err_pipe[0]), err_write(err_pipe[1]);
  plan.error_fd = err_write.get();
  UniqueFd go_read, go_write;
  plan.go_fd = -1;
  if (spec.before_setup) {
    int go[2];
    if (::pipe2(go, O_CLOEXEC) != 0) return ErrnoStatus("pipe2", errno);
    go_read.reset(go[0]);
    go_write.reset(go[1]);
    plan.go_fd = go_read.get();
  }

  uint64_t flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_PIDFD;
  if (spec.new_net) flags |= CLONE_NEWNET;
  int pidfd_raw = -1;
  // The child shares our memory until it execs (CLONE_VM, as posix_spawn
  // does): no copy of sandboxd's page tables to make and tear down, which
  // a fork-like clone pays on every VMM start. It runs on a stack of its
  // own, touches only `plan` (read-only) and its stack, makes raw system
  // calls, allocates nothing. Not CLONE_VFORK: we run before_setup while
  // it waits. The stack is freed once it has exec'd or been reaped.
  constexpr size_t kChildStack = 256 * 1024;
  void* stack = ::mmap(nullptr, kChildStack, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) return ErrnoStatus("mmap", "the jail's child stack", errno);
  struct StackRelease {
    void* stack;
    ~StackRelease() { ::munmap(stack, kChildStack); }
  } stack_release{stack};

  // No handler of ours may run in the child: block everything across clone.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  const int pid = ::clone(
      [](void* arg) -> int { RunChild(*static_cast<const ChildPlan*>(arg)); },
      static_cast<char*>(stack) + kChildStack, static_cast<int>(flags | CLONE_VM) | SIGCHLD,
      &plan, &pidfd_raw);
  const int clone_errno = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) return ErrnoStatus("clone", spec.argv[0], clone_errno);
  UniqueFd pidfd(pidfd_raw);
  err_write.reset();
  go_read.reset();
  if (spec.before_setup) {
    absl::Status s = spec.before_setup(static_cast<pid_t>(pid));
    if (s.ok() && ::write(go_write.get(), "g", 1) != 1) {
      s = ErrnoStatus("write", "the jail's start pipe", errno);
    }
    if (!s.ok()) {
      (void)PidfdSendSignal(pidfd.get(), SIGKILL);
      (void)Reap(pidfd.get(), 0);
      return Annotate(s, absl::StrCat("jailing ", spec.argv[0], ": before its setup"));
    }
    go_write.reset();
  }

  // EOF: execve succeeded (the pipe is O_CLOEXEC); a ChildError: a step failed.
  ChildError e;
  ssize_t n;
  do {
    n = ::read(err_read.get(), &e, sizeof(e));
  } while (n < 0 && errno == EINTR);
  if (n != 0) {
    const int read_errno = errno;
    if (n != static_cast<ssize_t>(sizeof(e))) {
      (void)PidfdSendSignal(pidfd.get(), SIGKILL);
    }
    (void)Reap(pidfd.get(), 0);
    if (n < 0) return ErrnoStatus("read", "the jail's error pipe", read_errno);
    if (n != static_cast<ssize_t>(sizeof(e))) {
      return absl::InternalError("jail: a short report on the error pipe");
    }
    return Annotate(ErrnoStatus(StepName(e, spec, mount_names, rlimit_names), e.err),
                    absl::StrCat("jailing ", spec.argv[0]));
  }
  return JailedProcess(static_cast<pid_t>(pid), std::move(pidfd));
}

}  // namespace sbx::sandboxd
