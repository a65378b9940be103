#ifndef SBX_VMM_SECCOMP_POLICY_H_
#define SBX_VMM_SECCOMP_POLICY_H_

// Seccomp filters for sbx-vmm, one per thread role (vmm/README.md
// "Seccomp"). Each role's filter allows exactly the system calls (and, for
// ioctl, the KVM requests) that role's thread makes once the VM is built;
// anything else ends the whole VMM with SIGSYS (SECCOMP_RET_KILL_PROCESS),
// or, in log mode, is allowed and logged by the kernel.
//
// A Filter is compiled (libseccomp -> classic BPF) ahead of time, on the
// thread that builds the VM; the thread it is meant for installs it at its
// start with Install(), which allocates nothing. A filter applies to the
// calling thread only (no TSYNC), and a thread started from a filtered
// thread inherits its filter: so every role installs on its own thread, and
// the thread that calls Machine::Run installs kMain only once it has
// started the others.

#include <linux/filter.h>
#include <sys/types.h>

#include <optional>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace sbx::vmm::seccomp {

enum class Mode {
  kOff,   // no filters (debugging only: says so loudly in sbx-vmm)
  kKill,  // a forbidden call kills the whole VMM with SIGSYS (default)
  kLog,   // a forbidden call is allowed and logged by the kernel
          // (dmesg / audit: "type=1326 ... syscall=N"); for development
};

enum class Role {
  kVcpu,       // one vCPU thread: KVM_RUN, exits, device register emulation
  kEventLoop,  // the device event loop: virtqueues, disks, vsock sockets
  kControl,    // the control socket server: pause/resume, snapshots, stats
  kMain,       // the thread that calls Machine::Run: waits, then tears down
  kPrefetch,   // working-set prefetch after a restore: madvise
};
inline constexpr Role kAllRoles[] = {Role::kVcpu, Role::kEventLoop,
                                     Role::kControl, Role::kMain,
                                     Role::kPrefetch};

// "vcpu", "loop", "control", "main", "prefetch".
std::string_view RoleName(Role role);
std::optional<Role> ParseRole(std::string_view name);
// "off", "kill", "log".
std::string_view ModeName(Mode mode);
std::optional<Mode> ParseMode(std::string_view name);

// What a Machine (or ControlServer) is asked for.
struct Options {
  Mode mode = Mode::kOff;
  // Test hook (sbx-vmm's hidden --seccomp-test-forbidden-syscall ROLE):
  // the thread of this role makes a forbidden system call once its filter
  // is in place (a vCPU thread: after its first exit from the guest), so a
  // test can see the VMM die with SIGSYS. Set only from the command line;
  // nothing a guest does reaches it.
  std::optional<Role> test_violation;
};

// What narrows a role's rules to this process and thread.
struct Scope {
  pid_t pid = 0;     // tgkill only within this process (0: getpid())
  int vcpu_fd = -1;  // kVcpu: ioctls only on this vCPU's fd (REQUIRED)
};

class Filter {
 public:
  // Compiles `role`'s allowlist. REQUIRES: mode is kKill or kLog. Errors:
  // kInvalidArgument for a kVcpu scope without a vCPU fd, kInternal if
  // libseccomp refuses a rule, kFailedPrecondition if this kernel lacks
  // the action (SECCOMP_RET_LOG needs Linux 4.14).
  static absl::StatusOr<Filter> Build(Role role, Mode mode, const Scope& scope);

  Filter(Filter&&) = default;
  Filter& operator=(Filter&&) = default;

  // Installs the filter on the calling thread (PR_SET_NO_NEW_PRIVS, then
  // seccomp(SECCOMP_SET_MODE_FILTER)), which keeps it until it exits.
  // Returns 0 or the errno of the call that failed. Allocates nothing and
  // makes only async-signal-safe calls.
  int InstallOnThisThread() const noexcept;
  // As InstallOnThisThread, with the error as a status naming the role.
  absl::Status Install() const;

  Role role() const { return role_; }
  Mode mode() const { return mode_; }
  // The BPF program, for tests (seccomp_export_bpf's output).
  const std::vector<sock_filter>& program() const { return program_; }

 private:
  Filter(Role role, Mode mode, std::vector<sock_filter> program)
      : role_(role), mode_(mode), program_(std::move(program)) {}

  Role role_;
  Mode mode_;
  std::vector<sock_filter> program_;
};

// The test hook's call: socket(AF_INET, SOCK_STREAM, 0), which no role
// allows (a VMM has no business with the network). Under kKill the process
// dies in it; otherwise the socket is closed again.
void MakeForbiddenSyscall();

// Runs before the first filter of a process: initialises what glibc and
// abseil would otherwise set up lazily by opening a file, which no role but
// kControl may (the time zone of log lines, the CPU count absl::Mutex
// spins by). Idempotent.
void PrepareProcess();

}  // namespace sbx::vmm::seccomp

#endif  // SBX_VMM_SECCOMP_POLICY_H_
