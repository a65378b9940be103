// The seccomp policies without KVM: each role's filter compiles, and
// installed in a forked child it allows what the role does and kills the
// process with SIGSYS for what it must not (the network, ptrace, signals to
// other processes, executable memory, another vCPU's fd).
#include "vmm/seccomp/policy.h"

#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <linux/futex.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <functional>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sbx::vmm::seccomp {
namespace {

// How a child that installed `filter` and then ran `body` ended: "exit N"
// (N = body's return value) or "signal N".
std::string RunFiltered(const Filter& filter, const std::function<int()>& body) {
  pid_t pid = ::fork();
  if (pid == 0) {
    // Only system calls from here on; no allocation, no gtest.
    if (filter.InstallOnThisThread() != 0) ::_exit(100);
    ::_exit(body());
  }
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid) return "fork/wait failed";
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "signal " + std::to_string(WTERMSIG(status));
  return "?";
}

const std::string kSigsys = "signal " + std::to_string(SIGSYS);

Filter MustBuild(Role role, Mode mode, int vcpu_fd = 3) {
  absl::StatusOr<Filter> f = Filter::Build(role, mode, {.pid = 0, .vcpu_fd = vcpu_fd});
  EXPECT_TRUE(f.ok()) << RoleName(role) << ": " << f.status();
  return *std::move(f);
}

int InetSocket() { return static_cast<int>(::syscall(SYS_socket, AF_INET, SOCK_STREAM, 0)); }

TEST(SeccompPolicyTest, NamesRoundTrip) {
  for (Role role : kAllRoles) EXPECT_EQ(ParseRole(RoleName(role)), role);
  EXPECT_EQ(ParseRole("gpu"), std::nullopt);
  for (Mode mode : {Mode::kOff, Mode::kKill, Mode::kLog}) {
    EXPECT_EQ(ParseMode(ModeName(mode)), mode);
  }
  EXPECT_EQ(ParseMode("trap"), std::nullopt);
}

TEST(SeccompPolicyTest, EveryRoleCompilesInBothModes) {
  for (Mode mode : {Mode::kKill, Mode::kLog}) {
    for (Role role : kAllRoles) {
      absl::StatusOr<Filter> f = Filter::Build(role, mode, {.pid = 0, .vcpu_fd = 7});
      ASSERT_TRUE(f.ok()) << RoleName(role) << " " << ModeName(mode) << ": "
                          << f.status();
      EXPECT_EQ(f->role(), role);
      EXPECT_GT(f->program().size(), 10u) << RoleName(role);
      EXPECT_LE(f->program().size(), 4096u) << RoleName(role);  // BPF_MAXINSNS
    }
  }
}

TEST(SeccompPolicyTest, BadRequestsAreRefused) {
  EXPECT_TRUE(absl::IsInvalidArgument(
      Filter::Build(Role::kVcpu, Mode::kKill, {}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(
      Filter::Build(Role::kMain, Mode::kOff, {}).status()));
}

TEST(SeccompPolicyTest, EveryRoleKillsOnNetworkSocketAndPtrace) {
  for (Role role : kAllRoles) {
    Filter f = MustBuild(role, Mode::kKill);
    EXPECT_EQ(RunFiltered(f, [] { return InetSocket() >= 0 ? 0 : 1; }), kSigsys)
        << RoleName(role);
    EXPECT_EQ(RunFiltered(f, [] {
                return ::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) == 0 ? 0 : 1;
              }),
              kSigsys)
        << RoleName(role);
    // Signals to another process (the parent, here: another sandbox's VMM).
    EXPECT_EQ(RunFiltered(f, [] { return ::kill(::getppid(), 0) == 0 ? 0 : 1; }),
              kSigsys)
        << RoleName(role);
    // New executable memory.
    EXPECT_EQ(RunFiltered(f, [] {
                void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_EXEC,
                                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                return p == MAP_FAILED ? 1 : 0;
              }),
              kSigsys)
        << RoleName(role);
    // A new process.
    EXPECT_EQ(RunFiltered(f, [] { return ::syscall(SYS_fork) >= 0 ? 0 : 1; }),
              kSigsys)
        << RoleName(role);
  }
}

TEST(SeccompPolicyTest, EveryRoleAllowsTheBasics) {
  for (Role role : kAllRoles) {
    Filter f = MustBuild(role, Mode::kKill);
    EXPECT_EQ(RunFiltered(f, [] {
                // A log line, memory, the clock, a mutex wake, our own pid.
                if (::write(STDERR_FILENO, "", 0) != 0) return 1;
                void* p = ::mmap(nullptr, 8192, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                if (p == MAP_FAILED || ::munmap(p, 8192) != 0) return 2;
                timespec ts;
                if (::syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts) != 0) return 3;
                int word = 0;
                if (::syscall(SYS_futex, &word, FUTEX_WAKE_PRIVATE, 1, nullptr) < 0) return 4;
                if (::syscall(SYS_getpid) <= 0) return 5;
                return 0;
              }),
              "exit 0")
        << RoleName(role);
  }
}

TEST(SeccompPolicyTest, OnlyTheEventLoopMakesUnixSockets) {
  auto unix_socket = [] {
    int fd = static_cast<int>(::syscall(SYS_socket, AF_UNIX,
                                        SOCK_STREAM | SOCK_CLOEXEC, 0));
    return fd >= 0 ? 0 : 1;
  };
  EXPECT_EQ(RunFiltered(MustBuild(Role::kEventLoop, Mode::kKill), unix_socket), "exit 0");
  // Datagram sockets are not what vsock uses.
  EXPECT_EQ(RunFiltered(MustBuild(Role::kEventLoop, Mode::kKill), [] {
              return ::syscall(SYS_socket, AF_UNIX, SOCK_DGRAM, 0) >= 0 ? 0 : 1;
            }),
            kSigsys);
  for (Role role : {Role::kVcpu, Role::kControl, Role::kMain, Role::kPrefetch}) {
    EXPECT_EQ(RunFiltered(MustBuild(role, Mode::kKill), unix_socket), kSigsys)
        << RoleName(role);
  }
}

TEST(SeccompPolicyTest, OpensFailWithEaccesWhereTheRoleHasNone) {
  auto open_rw = [] {
    int fd = static_cast<int>(::syscall(SYS_openat, AT_FDCWD, "/dev/null",
                                        O_RDWR | O_CLOEXEC));
    return fd >= 0 ? 0 : (errno == EACCES ? 2 : 1);
  };
  auto open_ro = [] {
    int fd = static_cast<int>(::syscall(SYS_openat, AT_FDCWD, "/dev/null",
                                        O_RDONLY | O_CLOEXEC));
    return fd >= 0 ? 0 : (errno == EACCES ? 2 : 1);
  };
  for (Role role : {Role::kVcpu, Role::kMain, Role::kPrefetch}) {
    EXPECT_EQ(RunFiltered(MustBuild(role, Mode::kKill), open_ro), "exit 2")
        << RoleName(role);
  }
  // The event loop: read-only (vsock's spare descriptor), nothing else.
  EXPECT_EQ(RunFiltered(MustBuild(Role::kEventLoop, Mode::kKill), open_ro), "exit 0");
  EXPECT_EQ(RunFiltered(MustBuild(Role::kEventLoop, Mode::kKill), open_rw), "exit 2");
  // The control thread writes snapshots.
  EXPECT_EQ(RunFiltered(MustBuild(Role::kControl, Mode::kKill), open_rw), "exit 0");
}

TEST(SeccompPolicyTest, VcpuIoctlsOnlyOnItsOwnFdAndOnlyRunAndGetRegs) {
  // A stand-in for the vCPU fd: the filter looks at numbers only, and
  // KVM_RUN on /dev/null fails with ENOTTY once allowed.
  int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  Filter f = MustBuild(Role::kVcpu, Mode::kKill, fd);
  EXPECT_EQ(RunFiltered(f, [fd] {
              return ::ioctl(fd, KVM_RUN, 0) != 0 && errno == ENOTTY ? 0 : 1;
            }),
            "exit 0");
  EXPECT_EQ(RunFiltered(f, [fd] {
              kvm_regs regs;
              return ::ioctl(fd, KVM_GET_REGS, &regs) != 0 && errno == ENOTTY ? 0 : 1;
            }),
            "exit 0");
  // Another fd (another vCPU, the VM), another request.
  EXPECT_EQ(RunFiltered(f, [fd] { return ::ioctl(fd + 1, KVM_RUN, 0) == 0 ? 0 : 1; }),
            kSigsys);
  EXPECT_EQ(RunFiltered(f, [fd] {
              kvm_regs regs = {};
              return ::ioctl(fd, KVM_SET_REGS, &regs) == 0 ? 0 : 1;
            }),
            kSigsys);
  EXPECT_EQ(RunFiltered(f, [fd] { return ::ioctl(fd, KVM_CREATE_VCPU, 1) == 0 ? 0 : 1; }),
            kSigsys);
  // The event loop makes no ioctl at all.
  EXPECT_EQ(RunFiltered(MustBuild(Role::kEventLoop, Mode::kKill), [fd] {
              return ::ioctl(fd, KVM_RUN, 0) == 0 ? 0 : 1;
            }),
            kSigsys);
  ::close(fd);
}

TEST(SeccompPolicyTest, ControlIoctlsAreSnapshotReadsOnly) {
  int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  Filter f = MustBuild(Role::kControl, Mode::kKill);
  EXPECT_EQ(RunFiltered(f, [fd] {
              kvm_regs regs;
              return ::ioctl(fd, KVM_GET_REGS, &regs) != 0 && errno == ENOTTY ? 0 : 1;
            }),
            "exit 0");
  for (unsigned long request : {static_cast<unsigned long>(KVM_RUN),
                                static_cast<unsigned long>(KVM_SET_REGS),
                                static_cast<unsigned long>(KVM_CREATE_VM)}) {
    EXPECT_EQ(RunFiltered(f, [fd, request] { return ::ioctl(fd, request, 0) == 0 ? 0 : 1; }),
              kSigsys)
        << std::hex << request;
  }
  ::close(fd);
}

TEST(SeccompPolicyTest, KickSignalOnlyWithinThisProcess) {
  // The filter names its process: built in the child (its pid), which is
  // single-threaded like this test, so allocating there is fine.
  // Another process (another sandbox's VMM), waiting to be signalled.
  pid_t victim = ::fork();
  if (victim == 0) {
    ::pause();
    ::_exit(0);
  }
  ASSERT_GT(victim, 0);
  auto run = [victim](int signal, bool to_victim) {
    pid_t pid = ::fork();
    if (pid == 0) {
      absl::StatusOr<Filter> f = Filter::Build(Role::kControl, Mode::kKill, {});
      if (!f.ok() || f->InstallOnThisThread() != 0) ::_exit(100);
      if (to_victim) {
        ::syscall(SYS_tgkill, victim, victim, signal);
      } else {
        ::syscall(SYS_tgkill, ::getpid(), ::gettid(), signal);
      }
      ::_exit(0);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFSIGNALED(status) ? "signal " + std::to_string(WTERMSIG(status))
                               : "exit " + std::to_string(WEXITSTATUS(status));
  };
  // The kick signal (SIGRTMIN) to itself is allowed: its default action
  // ends the child.
  EXPECT_EQ(run(SIGRTMIN, false), "signal " + std::to_string(SIGRTMIN));
  // Any other signal, or the kick signal to another process, is not.
  EXPECT_EQ(run(SIGUSR1, false), kSigsys);
  EXPECT_EQ(run(SIGRTMIN, true), kSigsys);
  int status = 0;
  EXPECT_EQ(::waitpid(victim, &status, WNOHANG), 0);  // untouched
  ::kill(victim, SIGKILL);
  ::waitpid(victim, &status, 0);
}

TEST(SeccompPolicyTest, LogModeAllowsAndDoesNotKill) {
  for (Role role : kAllRoles) {
    EXPECT_EQ(RunFiltered(MustBuild(role, Mode::kLog), [] {
                int fd = InetSocket();
                return fd >= 0 ? 0 : 1;
              }),
              "exit 0")
        << RoleName(role);
  }
}

TEST(SeccompPolicyTest, TestHookCallIsForbiddenEverywhere) {
  for (Role role : kAllRoles) {
    EXPECT_EQ(RunFiltered(MustBuild(role, Mode::kKill), [] {
                MakeForbiddenSyscall();
                return 0;
              }),
              kSigsys)
        << RoleName(role);
  }
}

}  // namespace
}  // namespace sbx::vmm::seccomp
