#include "sandboxd/ctl/embedded_daemon.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/status.h"
#include "base/unique_fd.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace sbx::ctl {
namespace {

std::string UnixPath(const std::string& addr) {
  if (absl::StartsWith(addr, "unix://")) return addr.substr(7);
  if (absl::StartsWith(addr, "unix:")) return addr.substr(5);
  return "";
}

std::string LogTail(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string log = ss.str();
  constexpr size_t kMax = 4000;
  if (log.size() > kMax) log = "..." + log.substr(log.size() - kMax);
  while (!log.empty() && log.back() == '\n') log.pop_back();
  return log.empty() ? "(no output)" : log;
}

// Waits up to `timeout` for `pid`; true once reaped.
bool WaitFor(pid_t pid, absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (true) {
    pid_t r = waitpid(pid, nullptr, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD)) return true;
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
}

}  // namespace

bool NothingListensAt(const std::string& addr) {
  std::string path = UnixPath(addr);
  if (path.empty()) return false;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path) return false;
  memcpy(sa.sun_path, path.data(), path.size());
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return false;
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) return false;
  return errno == ENOENT || errno == ECONNREFUSED;
}

std::string FindSandboxd(const std::string& self_exe) {
  size_t slash = self_exe.rfind('/');
  if (slash != std::string::npos) {
    std::string beside = self_exe.substr(0, slash + 1) + "sandboxd";
    if (access(beside.c_str(), X_OK) == 0) return beside;
  }
  return "sandboxd";
}

absl::StatusOr<std::unique_ptr<EmbeddedDaemon>> EmbeddedDaemon::Start(
    const std::string& binary, const std::string& state_dir,
    absl::Duration timeout) {
  const char* tmpdir = getenv("TMPDIR");
  std::string dir = absl::StrCat(tmpdir != nullptr && *tmpdir != '\0' ? tmpdir : "/tmp",
                                 "/sandboxctl-XXXXXX");
  if (mkdtemp(dir.data()) == nullptr) return ErrnoStatus("mkdtemp", dir, errno);
  const std::string log = dir + "/sandboxd.log";
  const std::string sock = dir + "/sandboxd.sock";
  auto remove_dir = [&] {
    unlink(log.c_str());
    unlink(sock.c_str());
    rmdir(dir.c_str());
  };

  // Everything the child needs is prepared before fork(): after it, only
  // async-signal-safe calls.
  UniqueFd log_fd(open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  UniqueFd null_fd(open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!log_fd.valid() || !null_fd.valid()) {
    absl::Status st = ErrnoStatus("open", log, errno);
    remove_dir();
    return st;
  }
  std::vector<std::string> args = {binary, "--listen", "unix://" + sock};
  if (!state_dir.empty()) {
    args.push_back("--state-dir");
    args.push_back(state_dir);
  }
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const bool search_path = binary.find('/') == std::string::npos;
  const pid_t parent = getpid();

  pid_t pid = fork();
  if (pid < 0) {
    absl::Status st = ErrnoStatus("fork", errno);
    remove_dir();
    return st;
  }
  if (pid == 0) {
    // Its own process group: a Ctrl-C at the terminal is for the command,
    // not the daemon; sandboxctl ends it. And it ends if sandboxctl dies.
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);
    dup2(null_fd.get(), 0);
    dup2(log_fd.get(), 1);
    dup2(log_fd.get(), 2);
    if (search_path) {
      execvp(argv[0], argv.data());
    } else {
      execv(argv[0], argv.data());
    }
    static constexpr char kMsg[] = "sandboxctl: cannot execute sandboxd\n";
    [[maybe_unused]] ssize_t n = write(2, kMsg, sizeof kMsg - 1);
    _exit(127);
  }
  std::unique_ptr<EmbeddedDaemon> d(new EmbeddedDaemon(pid, dir));

  absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int wstatus = 0;
    if (waitpid(pid, &wstatus, WNOHANG) == pid) {
      d->pid_ = -1;
      if (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 127) {
        return absl::NotFoundError(absl::StrCat(
            "cannot execute ", binary,
            ": put sandboxd beside sandboxctl or on PATH (or name it in SBX_SANDBOXD)"));
      }
      std::string how = WIFEXITED(wstatus)
                            ? absl::StrCat("exited with status ", WEXITSTATUS(wstatus))
                            : absl::StrCat("killed by signal ", WTERMSIG(wstatus));
      return absl::UnavailableError(absl::StrCat(
          "sandboxd (", binary, ") ", how, " before serving; its log:\n", LogTail(log)));
    }
    // Poll the socket itself: a gRPC channel that failed to connect backs
    // off for seconds before it tries again. Once it accepts, a fresh
    // channel confirms gRPC answers there.
    if (!NothingListensAt(d->addr())) {
      auto channel = grpc::CreateChannel(d->addr(), grpc::InsecureChannelCredentials());
      if (channel->WaitForConnected(std::chrono::system_clock::now() +
                                    std::chrono::seconds(1))) {
        return d;
      }
    }
    absl::SleepFor(absl::Milliseconds(20));
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "sandboxd (", binary, ") not serving after ", absl::FormatDuration(timeout),
          "; its log:\n", LogTail(log)));
    }
  }
}

EmbeddedDaemon::~EmbeddedDaemon() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    if (!WaitFor(pid_, absl::Seconds(30))) {
      kill(pid_, SIGKILL);
      WaitFor(pid_, absl::Seconds(5));
    }
  }
  unlink((dir_ + "/sandboxd.log").c_str());
  unlink((dir_ + "/sandboxd.sock").c_str());
  rmdir(dir_.c_str());
}

}  // namespace sbx::ctl
