// jail_probe: the program jail_test runs inside the jail. Statically linked
// (the jail holds no libraries), libc calls only. Performs the one action
// argv names and exits 0 when the call succeeded, 1 when it failed (after
// printing "errno=NAME" to stdout), 2 on bad usage.
//
//   open PATH [rw]  open PATH read-only (or read-write and write "jail\n")
//   socket-inet PORT  TCP connect to 127.0.0.1:PORT
//   kill PID        kill(PID, SIGTERM)
//   ptrace PID      PTRACE_ATTACH to PID
//   id              prints "uid=R,E,S gid=R,E,S groups=N"
//   caps            prints "eff=.. prm=.. inh=.. bnd=N amb=N" (hex words,
//                   counts of capabilities still in the sets)
//   nnp             prints "nnp=V" (PR_GET_NO_NEW_PRIVS)
//   rlimit          prints "nofile=CUR,MAX fsize=CUR,MAX nproc=CUR,MAX"
//   pid             prints "pid=N"
//   sleep           pause() forever (no signal handlers)
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace {

int Failed() {
  printf("errno=%s\n", strerrorname_np(errno));
  return 1;
}

unsigned long long Limit(rlim_t v) {
  return v == RLIM_INFINITY ? ~0ull : static_cast<unsigned long long>(v);
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IONBF, 0);
  if (argc < 2) return 2;
  const char* what = argv[1];
  if (strcmp(what, "open") == 0 && argc >= 3) {
    const bool rw = argc >= 4 && strcmp(argv[3], "rw") == 0;
    int fd = open(argv[2], rw ? O_RDWR : O_RDONLY);
    if (fd < 0) return Failed();
    if (rw && write(fd, "jail\n", 5) != 5) return Failed();
    return 0;
  }
  if (strcmp(what, "stat") == 0 && argc >= 3) {
    struct stat st;
    if (lstat(argv[2], &st) != 0) return Failed();
    printf("uid=%u gid=%u mode=%o\n", static_cast<unsigned>(st.st_uid),
           static_cast<unsigned>(st.st_gid), static_cast<unsigned>(st.st_mode));
    return 0;
  }
  if (strcmp(what, "socket-inet") == 0 && argc >= 3) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return Failed();
    sockaddr_in addr;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(atoi(argv[2])));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return Failed();
    return 0;
  }
  if (strcmp(what, "kill") == 0 && argc >= 3) {
    if (kill(static_cast<pid_t>(atoi(argv[2])), SIGTERM) != 0) return Failed();
    return 0;
  }
  if (strcmp(what, "ptrace") == 0 && argc >= 3) {
    if (ptrace(PTRACE_ATTACH, static_cast<pid_t>(atoi(argv[2])), nullptr, nullptr) != 0) {
      return Failed();
    }
    return 0;
  }
  if (strcmp(what, "id") == 0) {
    uid_t r, e, s;
    gid_t gr, ge, gs;
    getresuid(&r, &e, &s);
    getresgid(&gr, &ge, &gs);
    printf("uid=%u,%u,%u gid=%u,%u,%u groups=%d\n", r, e, s, gr, ge, gs, getgroups(0, nullptr));
    return 0;
  }
  if (strcmp(what, "caps") == 0) {
    struct {
      uint32_t version;
      int pid;
    } header = {0x20080522, 0};
    struct {
      uint32_t effective, permitted, inheritable;
    } data[2];
    if (syscall(SYS_capget, &header, data) != 0) return Failed();
    int bnd = 0, amb = 0;
    for (int cap = 0; cap < 64; ++cap) {
      if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1) ++bnd;
      if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, cap, 0, 0) == 1) ++amb;
    }
    printf("eff=%x%08x prm=%x%08x inh=%x%08x bnd=%d amb=%d\n", data[1].effective,
           data[0].effective, data[1].permitted, data[0].permitted, data[1].inheritable,
           data[0].inheritable, bnd, amb);
    return 0;
  }
  if (strcmp(what, "nnp") == 0) {
    printf("nnp=%d\n", prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0));
    return 0;
  }
  if (strcmp(what, "rlimit") == 0) {
    rlimit nofile, fsize, nproc;
    getrlimit(RLIMIT_NOFILE, &nofile);
    getrlimit(RLIMIT_FSIZE, &fsize);
    getrlimit(RLIMIT_NPROC, &nproc);
    printf("nofile=%llu,%llu fsize=%llu,%llu nproc=%llu,%llu\n", Limit(nofile.rlim_cur),
           Limit(nofile.rlim_max), Limit(fsize.rlim_cur), Limit(fsize.rlim_max),
           Limit(nproc.rlim_cur), Limit(nproc.rlim_max));
    return 0;
  }
  if (strcmp(what, "pid") == 0) {
    printf("pid=%d\n", getpid());
    return 0;
  }
  if (strcmp(what, "sleep") == 0) {
    for (;;) pause();
  }
  return 2;
}
