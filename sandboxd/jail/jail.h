#ifndef SBX_SANDBOXD_JAIL_JAIL_H_
#define SBX_SANDBOXD_JAIL_JAIL_H_

#include <sys/resource.h>
#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/unique_fd.h"

// The jail each sbx-vmm runs in (issue 7): new mount, pid, ipc, uts and
// (by default) network namespaces; a per-sandbox directory as /, holding
// only what the spec bind-mounts into it; an unprivileged uid/gid, no
// supplementary groups, every capability dropped (bounding, ambient,
// effective, permitted, inheritable), no_new_privs, rlimits. Modelled on
// sandboxed-api's sandbox2/namespace.cc and Firecracker's jailer.
//
// REQUIRES: the caller is root in the initial user namespace (CAP_SYS_ADMIN
// for the namespaces and mounts, CAP_SETUID/CAP_SETGID, CAP_SETPCAP).
//
// PID 1: the jailed program is PID 1 of its new pid namespace. The kernel
// delivers to a namespace's init only the signals it has installed a
// handler for — SIGTERM, SIGINT, SIGHUP... with their default action are
// dropped, even when sent by the parent. SIGKILL (and SIGSTOP) from the
// parent's namespace are always delivered. So a program that should stop
// cleanly on SIGTERM must install a handler; JailedProcess::Kill(SIGKILL)
// always works. When PID 1 exits, the kernel kills everything else in its
// pid namespace.

namespace sbx::sandboxd {

// One bind mount: `source` on the host appears at `target` inside the jail
// (an absolute path in the jail's /). A file or a directory; read-only
// unless `writable`. Always nosuid and nodev; noexec unless `exec`.
struct BindMount {
  std::string source;
  std::string target;
  bool writable = false;
  bool exec = false;
};

struct JailSpec {
  // The per-sandbox directory that becomes /: it must exist and be owned by
  // root. Inside the jail it is read-only, nosuid, nodev, noexec; the mount
  // points of `binds` and `devices` are created in it (as root, refusing
  // symlinks) before the process starts, and stay there.
  std::string root_dir;
  std::vector<BindMount> binds;
  // Device nodes (e.g. /dev/kvm, /dev/null), each /dev/NAME: the jail gets
  // a /dev of its own (a tiny tmpfs, nosuid, noexec, read-only once made)
  // holding only these, made afresh with the host node's type and numbers,
  // owned by uid:gid, mode 0600 — so the host node's own permissions (root's
  // /dev/kvm, mode 0600) do not matter. The only mount without nodev.
  std::vector<std::string> devices;
  // A fresh proc (of the jail's pid namespace: it shows only the jail's
  // processes) at /proc, nosuid, nodev, noexec. Off by default.
  bool mount_proc = false;
  // The unprivileged ids the program runs as; 0 (root) is refused.
  uid_t uid = 0;
  gid_t gid = 0;
  // Soft = hard limit each; nullopt leaves the inherited limit. Note that
  // RLIMIT_NPROC counts every process of `uid` on the host: give each
  // sandbox its own uid.
  std::optional<rlim_t> max_open_files;
  std::optional<rlim_t> max_file_size;  // bytes
  std::optional<rlim_t> max_processes;
  // A new, empty network namespace (only a loopback, down).
  bool new_net = true;
  // argv[0] is the program's path inside the jail (executed as is, no
  // PATH search); env is the whole environment (nothing is inherited).
  std::vector<std::string> argv;
  std::vector<std::string> env;
  // The program's stdout and stderr (-1: /dev/null); stdin is /dev/null.
  // Not taken over: the caller still owns them.
  int stdout_fd = -1;
  int stderr_fd = -1;
  // Called in the parent with the child's pid (in the caller's namespace)
  // while the child waits, before it makes any setup step or execs: e.g.
  // Cgroup::AddProcess, so the program never runs outside its cgroup. An
  // error kills and reaps the child and is SpawnJailed's result.
  std::function<absl::Status(pid_t)> before_setup;
};

// How a process ended.
struct ProcessExit {
  bool signaled = false;  // killed by signal `value`, else exited with `value`
  int value = 0;
  bool exited_with(int code) const { return !signaled && value == code; }
  bool killed_by(int signal) const { return signaled && value == signal; }
  std::string ToString() const;
};

// A jailed program, started by SpawnJailed. Move-only. Destroying it
// closes the pidfd and leaves the process running (sandboxd adopts VMMs
// after its own restart); whoever wants it gone calls Kill and Wait.
class JailedProcess {
 public:
  JailedProcess(JailedProcess&&) = default;
  JailedProcess& operator=(JailedProcess&&) = default;

  // The pid in the caller's namespace (it is 1 inside the jail).
  pid_t pid() const { return pid_; }
  // A pidfd of it: poll it for POLLIN to learn that it ended.
  int pidfd() const { return pidfd_.get(); }
  // Hands the pidfd over (for a caller with its own process watcher); this
  // object is then only its pid.
  UniqueFd ReleasePidfd() { return std::move(pidfd_); }

  // Sends `signal` through the pidfd. See the PID 1 note above: only
  // SIGKILL, SIGSTOP and signals the program handles arrive.
  absl::Status Kill(int signal);

  // Reaps the process, blocking until it has ended.
  absl::StatusOr<ProcessExit> Wait();
  // As Wait, for at most `timeout`: kDeadlineExceeded if it still runs.
  absl::StatusOr<ProcessExit> WaitFor(std::chrono::milliseconds timeout);

 private:
  friend absl::StatusOr<JailedProcess> SpawnJailed(const JailSpec& spec);
  JailedProcess(pid_t pid, UniqueFd pidfd) : pid_(pid), pidfd_(std::move(pidfd)) {}

  pid_t pid_ = -1;
  UniqueFd pidfd_;
};

// Checks `spec` (absolute paths without "..", sources that exist, devices
// that are device nodes, a root-owned root_dir, non-root ids, a non-empty
// argv), creates the mount points in root_dir, then starts spec.argv in
// the jail. Every setup step of the child that fails (a mount, pivot_root,
// the credential switch, execve...) comes back as an error naming the step
// and its object, with the child already reaped: nothing is left running.
absl::StatusOr<JailedProcess> SpawnJailed(const JailSpec& spec);

}  // namespace sbx::sandboxd

#endif  // SBX_SANDBOXD_JAIL_JAIL_H_
