#include "vmm/seccomp/policy.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <linux/seccomp.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <initializer_list>

#include "absl/base/internal/sysinfo.h"
#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "base/unique_fd.h"
#include "vmm/kvm/kvm_abi.h"

namespace sbx::vmm::seccomp {
namespace {

// The signal Machine kicks vCPU threads with (machine.cc KickSignal).
int KickSignal() { return SIGRTMIN; }

// A libseccomp filter under construction; the first failing rule is kept.
class Rules {
 public:
  explicit Rules(uint32_t default_action)
      : ctx_(seccomp_init(default_action)) {
    if (ctx_ == nullptr) {
      error_ = absl::FailedPreconditionError(
          "seccomp_init: libseccomp or this kernel does not support the action");
      return;
    }
    // Another ABI's system call numbers (i386 int $0x80, x32) mean
    // something else: treat them as forbidden.
    Check(seccomp_attr_set(ctx_, SCMP_FLTATR_ACT_BADARCH, default_action),
          "SCMP_FLTATR_ACT_BADARCH");
  }
  ~Rules() {
    if (ctx_ != nullptr) seccomp_release(ctx_);
  }
  Rules(const Rules&) = delete;
  Rules& operator=(const Rules&) = delete;

  // Allows each of `syscalls`, whatever the arguments.
  void Allow(std::initializer_list<int> syscalls) {
    for (int nr : syscalls) Add(SCMP_ACT_ALLOW, nr, {});
  }
  // Allows `nr` when all of `args` hold.
  void AllowIf(int nr, std::initializer_list<scmp_arg_cmp> args) {
    Add(SCMP_ACT_ALLOW, nr, args);
  }
  // `nr` fails with `err` (when all of `args` hold) instead of killing.
  void FailIf(int nr, int err, std::initializer_list<scmp_arg_cmp> args = {}) {
    Add(SCMP_ACT_ERRNO(static_cast<uint32_t>(err)), nr, args);
  }

  absl::StatusOr<std::vector<sock_filter>> Export() {
    if (!error_.ok()) return error_;
    // libseccomp 2.5 exports to a file descriptor only.
    UniqueFd fd(::memfd_create("sbx-seccomp", MFD_CLOEXEC));
    if (!fd.valid()) return ErrnoStatus("memfd_create", errno);
    if (int rc = seccomp_export_bpf(ctx_, fd.get()); rc != 0) {
      return absl::InternalError(
          absl::StrCat("seccomp_export_bpf: ", std::strerror(-rc)));
    }
    const off_t size = ::lseek(fd.get(), 0, SEEK_END);
    if (size < 0) return ErrnoStatus("lseek", "seccomp program", errno);
    if (size == 0 || size % sizeof(sock_filter) != 0 ||
        size / sizeof(sock_filter) > BPF_MAXINSNS) {
      return absl::InternalError(
          absl::StrCat("seccomp_export_bpf: a program of ", size, " bytes"));
    }
    std::vector<sock_filter> program(static_cast<size_t>(size) / sizeof(sock_filter));
    ssize_t n = ::pread(fd.get(), program.data(), static_cast<size_t>(size), 0);
    if (n != size) return ErrnoStatus("pread", "seccomp program", n < 0 ? errno : EIO);
    return program;
  }

 private:
  void Check(int rc, const char* what) {
    if (rc != 0 && error_.ok()) {
      error_ = absl::InternalError(
          absl::StrCat("libseccomp: ", what, ": ", std::strerror(-rc)));
    }
  }
  void Add(uint32_t action, int nr, std::initializer_list<scmp_arg_cmp> args) {
    if (!error_.ok()) return;
    const int rc = seccomp_rule_add_exact_array(
        ctx_, action, nr, static_cast<unsigned int>(args.size()), args.begin());
    if (rc != 0) {
      char* name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
      Check(rc, absl::StrCat("rule for ", name != nullptr ? name : "?", " (",
                             nr, ")")
                    .c_str());
      std::free(name);
    }
  }

  scmp_filter_ctx ctx_;
  absl::Status error_;
};

// What every thread of the VMM does, whatever its role: allocate and free
// memory (glibc malloc, absl's low-level allocator), wait on and wake
// mutexes and condition variables (absl::Mutex), read the clock (when the
// vDSO cannot), log a line to stderr, kick a vCPU thread of this process
// (Machine::Finish, Pause), and end.
void AddCommon(Rules& r, const Scope& scope) {
  r.Allow({SCMP_SYS(futex), SCMP_SYS(sched_yield), SCMP_SYS(nanosleep),
           SCMP_SYS(clock_nanosleep), SCMP_SYS(clock_gettime),
           SCMP_SYS(gettimeofday), SCMP_SYS(getpid), SCMP_SYS(gettid),
           SCMP_SYS(rt_sigreturn), SCMP_SYS(rt_sigprocmask),
           SCMP_SYS(restart_syscall), SCMP_SYS(exit), SCMP_SYS(exit_group),
           SCMP_SYS(brk), SCMP_SYS(munmap), SCMP_SYS(mremap), SCMP_SYS(madvise),
           SCMP_SYS(close), SCMP_SYS(write), SCMP_SYS(sched_getaffinity)});
  // absl::Mutex reads a waiting thread's priority now and then
  // (pthread_getschedparam; seen with --seccomp=log on a pausing vCPU).
  r.Allow({SCMP_SYS(sched_getparam), SCMP_SYS(sched_getscheduler)});
  // Memory, but never executable: no new code in this process.
  r.AllowIf(SCMP_SYS(mmap), {SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0)});
  r.AllowIf(SCMP_SYS(mprotect), {SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0)});
  // fstat (glibc: newfstatat(fd, "", AT_EMPTY_PATH)): of an open file only.
  r.Allow({SCMP_SYS(fstat)});
  // Signals: the kick (pthread_kill) and abort()'s SIGABRT, to this process.
  const auto pid = static_cast<scmp_datum_t>(scope.pid);
  r.AllowIf(SCMP_SYS(tgkill),
            {SCMP_A0(SCMP_CMP_EQ, pid),
             SCMP_A2(SCMP_CMP_EQ, static_cast<scmp_datum_t>(KickSignal()))});
  r.AllowIf(SCMP_SYS(tgkill), {SCMP_A0(SCMP_CMP_EQ, pid),
                               SCMP_A2(SCMP_CMP_EQ, SIGABRT)});
}

// Opening a file is no part of these roles. glibc and abseil still open a
// file now and then to set something up lazily (the time zone, the CPU
// count): that fails with EACCES, as without a jail's view of it, instead
// of killing the VMM.
void FailOpens(Rules& r) {
  r.FailIf(SCMP_SYS(open), EACCES);
  r.FailIf(SCMP_SYS(openat), EACCES);
  r.FailIf(SCMP_SYS(newfstatat), EACCES,
           {SCMP_A3(SCMP_CMP_NE, AT_EMPTY_PATH)});
  r.AllowIf(SCMP_SYS(newfstatat), {SCMP_A3(SCMP_CMP_EQ, AT_EMPTY_PATH)});
}

// What device emulation does on a host socket, eventfd or timerfd it
// already holds: virtio-vsock moving data and shutting connections,
// re-arming its timer, an eventfd raising an interrupt.
void AddDeviceIo(Rules& r) {
  r.Allow({SCMP_SYS(read), SCMP_SYS(readv), SCMP_SYS(writev),
           SCMP_SYS(recvfrom), SCMP_SYS(recvmsg), SCMP_SYS(sendto),
           SCMP_SYS(sendmsg), SCMP_SYS(shutdown), SCMP_SYS(poll),
           SCMP_SYS(ppoll), SCMP_SYS(epoll_ctl), SCMP_SYS(timerfd_settime)});
}

void AddVcpu(Rules& r, const Scope& scope) {
  const auto fd = static_cast<scmp_datum_t>(scope.vcpu_fd);
  // This vCPU only: run it, and read its registers to describe an exit.
  for (unsigned long request : std::initializer_list<unsigned long>{
           KVM_RUN, KVM_GET_REGS}) {
    r.AllowIf(SCMP_SYS(ioctl), {SCMP_A0(SCMP_CMP_EQ, fd),
                                SCMP_A1(SCMP_CMP_EQ, request)});
  }
  // Register writes (virtio-mmio status, serial, i8042) are emulated on
  // the vCPU thread: a virtio device activated or reset there touches its
  // host sockets and timer (vsock), and the serial port writes the console.
  AddDeviceIo(r);
  FailOpens(r);
}

void AddEventLoop(Rules& r) {
  r.Allow({SCMP_SYS(epoll_wait), SCMP_SYS(epoll_pwait)});
  AddDeviceIo(r);
  // virtio-blk: requests on the disk files, flushes.
  r.Allow({SCMP_SYS(pread64), SCMP_SYS(preadv), SCMP_SYS(preadv2),
           SCMP_SYS(pwrite64), SCMP_SYS(pwritev), SCMP_SYS(pwritev2),
           SCMP_SYS(fdatasync), SCMP_SYS(fsync)});
  // virtio-rng.
  r.Allow({SCMP_SYS(getrandom)});
  // virtio-vsock: host connections come in on its listening unix socket;
  // a guest's connection to host port P is a unix-socket connect to
  // PATH_P. Unix stream sockets only: no network.
  r.Allow({SCMP_SYS(accept4), SCMP_SYS(connect)});
  r.AllowIf(SCMP_SYS(socket),
            {SCMP_A0(SCMP_CMP_EQ, AF_UNIX),
             SCMP_A1(SCMP_CMP_MASKED_EQ, 0xf, SOCK_STREAM)});
  // virtio-vsock keeps a spare descriptor on /dev/null for when
  // descriptors run out: read-only opens are allowed, others fail.
  constexpr scmp_datum_t kSpareFlags = O_RDONLY | O_CLOEXEC;
  r.AllowIf(SCMP_SYS(openat), {SCMP_A2(SCMP_CMP_EQ, kSpareFlags)});
  r.FailIf(SCMP_SYS(openat), EACCES, {SCMP_A2(SCMP_CMP_NE, kSpareFlags)});
  r.FailIf(SCMP_SYS(open), EACCES);
  r.FailIf(SCMP_SYS(newfstatat), EACCES,
           {SCMP_A3(SCMP_CMP_NE, AT_EMPTY_PATH)});
  r.AllowIf(SCMP_SYS(newfstatat), {SCMP_A3(SCMP_CMP_EQ, AT_EMPTY_PATH)});
}

void AddControl(Rules& r) {
  // The control socket: accept a client, time it out, frames both ways.
  r.Allow({SCMP_SYS(accept4), SCMP_SYS(poll), SCMP_SYS(ppoll),
           SCMP_SYS(read), SCMP_SYS(recvfrom), SCMP_SYS(sendto)});
  r.AllowIf(SCMP_SYS(setsockopt), {SCMP_A1(SCMP_CMP_EQ, SOL_SOCKET)});
  // Snapshots: files in the snapshot directory (created, written, synced,
  // renamed into place), the base's vmstate, absolute paths; Stats reads
  // /proc/self/status. The jail decides which files these can reach.
  r.Allow({SCMP_SYS(openat), SCMP_SYS(pread64), SCMP_SYS(pwrite64),
           SCMP_SYS(lseek), SCMP_SYS(fsync), SCMP_SYS(fdatasync),
           SCMP_SYS(ftruncate), SCMP_SYS(rename), SCMP_SYS(renameat),
           SCMP_SYS(renameat2), SCMP_SYS(unlink), SCMP_SYS(unlinkat),
           SCMP_SYS(mkdir), SCMP_SYS(mkdirat), SCMP_SYS(newfstatat),
           SCMP_SYS(readlink), SCMP_SYS(readlinkat), SCMP_SYS(getcwd),
           SCMP_SYS(getrandom)});
  r.FailIf(SCMP_SYS(open), EACCES);
  // KVM state reads for a snapshot (snapshot/cpu_state.cc), the dirty log
  // (KVM_MEM_LOG_DIRTY_PAGES turned on at the first full snapshot).
  for (unsigned long request : std::initializer_list<unsigned long>{
        KVM_CHECK_EXTENSION, abi::kGetMsrIndexList, KVM_GET_MP_STATE,
        KVM_GET_REGS, KVM_GET_SREGS, abi::kGetXsave, KVM_GET_FPU,
        KVM_GET_XCRS, KVM_GET_DEBUGREGS, KVM_GET_LAPIC, abi::kGetMsrs,
        KVM_GET_VCPU_EVENTS, KVM_GET_IRQCHIP, KVM_GET_PIT2, KVM_GET_CLOCK,
        KVM_SET_USER_MEMORY_REGION, KVM_GET_DIRTY_LOG}) {
    r.AllowIf(SCMP_SYS(ioctl), {SCMP_A1(SCMP_CMP_EQ, request)});
  }
}

void AddMain(Rules& r) {
  // After Run: the device loop's descriptors leave its epoll set, the
  // vsock and control sockets are removed, eventfds stop threads.
  r.Allow({SCMP_SYS(epoll_ctl), SCMP_SYS(unlink), SCMP_SYS(read),
           SCMP_SYS(timerfd_settime)});
  FailOpens(r);
}

void AddPrefetch(Rules& r) {
  // madvise (MADV_POPULATE_*, MADV_WILLNEED) is in AddCommon.
  FailOpens(r);
}

}  // namespace

std::string_view RoleName(Role role) {
  switch (role) {
    case Role::kVcpu: return "vcpu";
    case Role::kEventLoop: return "loop";
    case Role::kControl: return "control";
    case Role::kMain: return "main";
    case Role::kPrefetch: return "prefetch";
  }
  return "?";
}

std::optional<Role> ParseRole(std::string_view name) {
  for (Role role : kAllRoles) {
    if (RoleName(role) == name) return role;
  }
  return std::nullopt;
}

std::string_view ModeName(Mode mode) {
  switch (mode) {
    case Mode::kOff: return "off";
    case Mode::kKill: return "kill";
    case Mode::kLog: return "log";
  }
  return "?";
}

std::optional<Mode> ParseMode(std::string_view name) {
  for (Mode mode : {Mode::kOff, Mode::kKill, Mode::kLog}) {
    if (ModeName(mode) == name) return mode;
  }
  return std::nullopt;
}

absl::StatusOr<Filter> Filter::Build(Role role, Mode mode, const Scope& scope) {
  if (mode == Mode::kOff) {
    return absl::InvalidArgumentError("seccomp: no filter to build in mode off");
  }
  if (role == Role::kVcpu && scope.vcpu_fd < 0) {
    return absl::InvalidArgumentError("seccomp: a vCPU filter needs the vCPU's fd");
  }
  Scope s = scope;
  if (s.pid == 0) s.pid = ::getpid();
  if (mode == Mode::kLog && seccomp_api_get() < 3) {
    return absl::FailedPreconditionError(
        "seccomp log mode: this kernel has no SECCOMP_RET_LOG (Linux 4.14+)");
  }
  Rules rules(mode == Mode::kKill ? SCMP_ACT_KILL_PROCESS : SCMP_ACT_LOG);
  AddCommon(rules, s);
  switch (role) {
    case Role::kVcpu: AddVcpu(rules, s); break;
    case Role::kEventLoop: AddEventLoop(rules); break;
    case Role::kControl: AddControl(rules); break;
    case Role::kMain: AddMain(rules); break;
    case Role::kPrefetch: AddPrefetch(rules); break;
  }
  absl::StatusOr<std::vector<sock_filter>> program = rules.Export();
  if (!program.ok()) {
    return Annotate(program.status(),
                    absl::StrCat("seccomp filter for role ", std::string(RoleName(role))));
  }
  return Filter(role, mode, *std::move(program));
}

int Filter::InstallOnThisThread() const noexcept {
  // no_new_privs lets an unprivileged thread install a filter (and is what
  // a jailed VMM has anyway); it applies to this thread and its children.
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return errno;
  sock_fprog prog = {.len = static_cast<unsigned short>(program_.size()),
                     .filter = const_cast<sock_filter*>(program_.data())};
  // No SECCOMP_FILTER_FLAG_TSYNC: this thread only.
  if (::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) {
    return errno;
  }
  return 0;
}

absl::Status Filter::Install() const {
  const int err = InstallOnThisThread();
  if (err == 0) return absl::OkStatus();
  return ErrnoStatus(absl::StrCat("seccomp filter for role ", std::string(RoleName(role_))),
                     err);
}

void MakeForbiddenSyscall() {
  const long fd = ::syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
  if (fd >= 0) ::close(static_cast<int>(fd));
}

void PrepareProcess() {
  // Log lines carry the local time: read the zone now, not under a filter
  // (localtime_r reads /etc/localtime once, on its first call).
  ::tzset();
  struct tm tm;
  const time_t now = ::time(nullptr);
  ::localtime_r(&now, &tm);
  // absl::Mutex sizes its spinning by the CPU count, read on first
  // contention from /sys/devices/system/cpu/online (seen under strace on a
  // vCPU thread): read it now. Under a filter the open would fail with
  // EACCES and glibc would fall back to sched_getaffinity, which is
  // allowed; this keeps the count right.
  (void)absl::base_internal::NumCPUs();
  // ... and times a blocked thread's priority reads by the TSC frequency,
  // which it reads from /sys or /proc on first use.
  (void)absl::base_internal::NominalCPUFrequency();
}

}  // namespace sbx::vmm::seccomp
