#ifndef SBX_BASE_PIDFD_H_
#define SBX_BASE_PIDFD_H_

// Process descriptors and the newer process-spawning constants that
// Debian 12's glibc headers may lack, in one place (sandboxd's VMM spawner
// and its jail both use them).

#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

namespace sbx {

#ifndef P_PIDFD
inline constexpr idtype_t P_PIDFD = static_cast<idtype_t>(3);  // Linux 5.4
#endif
#ifndef CLOSE_RANGE_CLOEXEC
inline constexpr unsigned int CLOSE_RANGE_CLOEXEC = 1u << 2;  // Linux 5.11
#endif

// pidfd_open(2): a descriptor of process `pid`; -1 with errno on error.
inline int PidfdOpen(pid_t pid) {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

// pidfd_send_signal(2): 0, or -1 with errno.
inline int PidfdSendSignal(int pidfd, int signal) {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, signal, nullptr, 0));
}

}  // namespace sbx

#endif  // SBX_BASE_PIDFD_H_
