// Tests patches/0003 without PVM: jumps from user mode to entry_SYSCALL_64,
// which is what a SYSCALL looks like to the guest kernel under PVM (a user-mode
// page fault at that address, RCX = return address, R11 = RFLAGS). The patched
// kernel must then behave exactly as for a real SYSCALL. Run as PID 1's child
// in a guest by images/kernel/test/qemu-boot; prints "SYSCALL-FAULT-TEST PASS".
//
// Build: gcc -O2 -static -o syscall_fault_test syscall_fault_test.c
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static unsigned long entry;  // address of entry_SYSCALL_64
static int failures;

#define CHECK(c)                                                   \
  do {                                                             \
    if (!(c)) {                                                    \
      printf("FAIL line %d: %s\n", __LINE__, #c);                  \
      failures++;                                                  \
    }                                                              \
  } while (0)

// A system call through the fault path. `jmp *%rbx` is 2 bytes long like
// SYSCALL, so a restarted call (RIP - 2) re-runs the jump.
static long fault_syscall(long nr, long a1, long a2, long a3,
                          unsigned long r11) {
  long ret;
  asm volatile(
      "lea 1f(%%rip), %%rcx\n\t"
      "mov %[fl], %%r11\n\t"
      "jmp *%%rbx\n"
      "1:\n"
      : "=a"(ret)
      : "a"(nr), "D"(a1), "S"(a2), "d"(a3), "b"(entry), [fl] "r"(r11)
      : "rcx", "r11", "memory");
  return ret;
}

static unsigned long read_flags(void) {
  unsigned long f;
  asm volatile("pushfq; pop %0" : "=r"(f));
  return f;
}

static volatile int alarms;
static void on_alarm(int sig) {
  (void)sig;
  alarms++;
}

int main(void) {
  setvbuf(stdout, NULL, _IONBF, 0);
  FILE *f = fopen("/proc/kallsyms", "r");
  char line[256], name[200], type;
  unsigned long addr;
  while (f && fgets(line, sizeof line, f)) {
    if (sscanf(line, "%lx %c %199s", &addr, &type, name) == 3 &&
        strcmp(name, "entry_SYSCALL_64") == 0)
      entry = addr;
  }
  if (!entry) {
    printf("SYSCALL-FAULT-TEST FAIL: no entry_SYSCALL_64 in /proc/kallsyms\n");
    return 1;
  }
  printf("entry_SYSCALL_64 at %#lx\n", entry);

  // Plain calls: result in RAX, unknown numbers give -ENOSYS.
  static const char msg[] = "write through the fault path\n";
  CHECK(fault_syscall(SYS_write, 1, (long)msg, sizeof msg - 1, 0x202) ==
        sizeof msg - 1);
  CHECK(fault_syscall(SYS_getpid, 0, 0, 0, 0x202) == getpid());
  CHECK(fault_syscall(1000, 0, 0, 0, 0x202) == -ENOSYS);

  // A forged R11 (IOPL 3, NT, TF, RF, VM) gives only what POPF could set.
  fault_syscall(SYS_getppid, 0, 0, 0,
                0x3000 | 0x4000 | 0x100 | 0x10000 | 0x20000 | 0x400 | 0x202);
  unsigned long fl = read_flags();
  asm volatile("cld");
  CHECK((fl & (0x3000 | 0x4000 | 0x100 | 0x20000)) == 0);
  CHECK(fl & 0x400);  // DF is user-settable and survives

  // fork through the fault path; the child exits through it too.
  long pid = fault_syscall(SYS_fork, 0, 0, 0, 0x202);
  if (pid == 0) {
    fault_syscall(SYS_exit_group, 7, 0, 0, 0x202);
    _exit(99);
  }
  int status = 0;
  CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
        WEXITSTATUS(status) == 7);

  // A signal interrupts a blocking call: the handler runs, pause() = -EINTR.
  signal(SIGALRM, on_alarm);
  alarm(1);
  CHECK(fault_syscall(SYS_pause, 0, 0, 0, 0x202) == -EINTR && alarms == 1);

  // SA_RESTART: read() is restarted after the handler and gets the data.
  struct sigaction sa = {0};
  sa.sa_handler = on_alarm;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGALRM, &sa, NULL);
  int p[2];
  CHECK(pipe(p) == 0);
  pid = fork();
  if (pid == 0) {
    sleep(2);
    if (write(p[1], "x", 1) != 1) _exit(1);
    _exit(0);
  }
  alarm(1);
  char c = 0;
  CHECK(fault_syscall(SYS_read, p[0], (long)&c, 1, 0x202) == 1 && c == 'x' &&
        alarms == 2);
  waitpid(pid, &status, 0);

  // seccomp filters apply on the fault path too.
  struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {sizeof filter / sizeof filter[0], filter};
  CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0);
  CHECK(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0);
  CHECK(fault_syscall(SYS_getppid, 0, 0, 0, 0x202) == -EPERM);
  CHECK(fault_syscall(SYS_getpid, 0, 0, 0, 0x202) == getpid());

  printf("SYSCALL-FAULT-TEST %s (%d failures)\n", failures ? "FAIL" : "PASS",
         failures);
  return failures != 0;
}
