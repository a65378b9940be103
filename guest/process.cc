#include "guest/process.h"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "base/logging.h"
#include "base/status.h"
#include "base/status_macros.h"

namespace sbx::agent {
namespace {

constexpr size_t kReadSize = 64 * 1024;

constexpr char kDefaultPath[] =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// SIGCHLD wakes the reaper through this eventfd (written from the signal
// handler: write(2) is async-signal-safe).
std::atomic<int> g_sigchld_fd{-1};

void OnSigchld(int) {
  int saved = errno;
  int fd = g_sigchld_fd.load(std::memory_order_relaxed);
  if (fd >= 0) {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = write(fd, &one, sizeof(one));
  }
  errno = saved;
}

// Finds `file` in `path_list` the way execvp would; a name with a slash is
// used as is.
absl::StatusOr<std::string> FindProgram(const std::string& file,
                                        const std::string& path_list) {
  if (file.empty()) return absl::InvalidArgumentError("empty argv[0]");
  if (file.find('/') != std::string::npos) return file;
  size_t start = 0;
  while (start <= path_list.size()) {
    size_t end = path_list.find(':', start);
    if (end == std::string::npos) end = path_list.size();
    std::string_view dir(path_list.data() + start, end - start);
    std::string candidate =
        absl::StrCat(dir.empty() ? "." : absl::string_view(dir.data(), dir.size()),
                     "/", file);
    struct stat st;
    if (stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
    start = end + 1;
  }
  return absl::NotFoundError(
      absl::StrCat(file, ": command not found in PATH ", path_list));
}

// What the child reports through its close-on-exec pipe when a step before
// exec fails.
struct ChildFailure {
  int step;
  int err;
};
constexpr const char* kStepNames[] = {"setsid",  "dup2",   "setgroups",
                                      "setgid",  "setuid", "chdir",
                                      "execve"};

// Everything the child needs, prepared before vfork.
struct ChildSetup {
  int stdin_fd, stdout_fd, stderr_fd, report_fd;
  bool set_gid;
  gid_t gid;
  bool set_uid;
  uid_t uid;
  const char* cwd;
  const char* program;
  char* const* argv;
  char* const* envp;
};

// The child between vfork and exec: only system calls, no allocation, no
// locks, nothing that touches the memory it shares with the parent beyond
// its own stack. Credentials change through raw system calls: glibc's
// setuid() and friends signal every thread of the (parent's) process.
[[noreturn]] void RunChild(const ChildSetup& setup) {
  auto fail = [&](int step) {
    ChildFailure failure = {step, errno};
    [[maybe_unused]] ssize_t n =
        write(setup.report_fd, &failure, sizeof(failure));
    _exit(127);
  };
  if (setsid() < 0) fail(0);
  if (dup2(setup.stdin_fd, 0) < 0 || dup2(setup.stdout_fd, 1) < 0 ||
      dup2(setup.stderr_fd, 2) < 0) {
    fail(1);
  }
  if (setup.set_gid) {
    if (syscall(SYS_setgroups, 1, &setup.gid) != 0) fail(2);
    if (syscall(SYS_setgid, setup.gid) != 0) fail(3);
  }
  if (setup.set_uid && syscall(SYS_setuid, setup.uid) != 0) fail(4);
  if (chdir(setup.cwd) != 0) fail(5);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  signal(SIGPIPE, SIG_DFL);
  signal(SIGCHLD, SIG_DFL);
  execve(setup.program, setup.argv, setup.envp);
  fail(6);
  _exit(127);  // not reached
}

absl::StatusOr<std::pair<UniqueFd, UniqueFd>> MakePipe() {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return ErrnoStatus("pipe2", errno);
  return std::make_pair(UniqueFd(fds[0]), UniqueFd(fds[1]));
}

}  // namespace

Process::Process(uint64_t id, pid_t pid, ExecSpec spec, UniqueFd stdin_fd,
                 UniqueFd stdout_fd, UniqueFd stderr_fd, EventFd exited_event)
    : id_(id),
      pid_(pid),
      argv_(std::move(spec.argv)),
      background_(spec.background),
      stdout_fd_(std::move(stdout_fd)),
      stderr_fd_(std::move(stderr_fd)),
      exited_event_(std::move(exited_event)),
      stdin_fd_(std::move(stdin_fd)) {}

Process::~Process() {
  if (pump_.joinable()) pump_.join();
}

bool Process::running() const {
  absl::MutexLock lock(&mu_);
  return !exited_;
}

bool Process::attached() const {
  absl::MutexLock lock(&mu_);
  return attached_;
}

uint64_t Process::Attach() {
  absl::MutexLock lock(&mu_);
  attached_ = true;
  return ++attachment_;  // a reader waiting in Next() sees it was taken over
}

void Process::Detach(uint64_t attachment) {
  absl::MutexLock lock(&mu_);
  if (attachment == attachment_) attached_ = false;
}

void Process::CancelWaits() {
  // Releasing the mutex makes waiters re-evaluate their conditions, which
  // read the `cancelled` flag the caller set.
  absl::MutexLock lock(&mu_);
}

ProcessEvent Process::Next(uint64_t attachment,
                           const std::atomic<bool>* cancelled) {
  absl::MutexLock lock(&mu_);
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !output_.empty() || finished_ || attachment != attachment_ ||
           (cancelled != nullptr && cancelled->load());
  };
  while (true) {
    mu_.Await(absl::Condition(&ready));
    if (attachment != attachment_) {
      ProcessEvent event;
      event.kind = ProcessEvent::Kind::kDetached;
      return event;
    }
    // A reader that is gone takes no more output: it stays buffered for
    // the next one.
    if (cancelled != nullptr && cancelled->load()) {
      ProcessEvent event;
      event.kind = ProcessEvent::Kind::kCancelled;
      return event;
    }
    if (!output_.empty()) {
      ProcessEvent event = std::move(output_.front());
      output_.pop_front();
      buffered_ -= event.data.size();
      return event;
    }
    if (finished_) {
      ProcessEvent event;
      event.kind = ProcessEvent::Kind::kExited;
      event.exit.timed_out = timed_out_;
      if (WIFSIGNALED(wait_status_)) {
        event.exit.signaled = true;
        event.exit.code = WTERMSIG(wait_status_);
      } else {
        event.exit.code = WEXITSTATUS(wait_status_);
      }
      return event;
    }
  }
}

absl::Status Process::WriteStdin(std::string_view data) {
  absl::MutexLock lock(&stdin_mu_);
  if (!stdin_fd_) return absl::FailedPreconditionError("stdin is closed");
  while (!data.empty()) {
    ssize_t n = write(stdin_fd_.get(), data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      stdin_fd_.reset();
      return ErrnoStatus("write stdin", err);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

void Process::CloseStdin() {
  absl::MutexLock lock(&stdin_mu_);
  stdin_fd_.reset();
}

absl::Status Process::Signal(int signal) {
  if (signal < 0 || signal >= NSIG) {
    return absl::InvalidArgumentError(absl::StrCat("no such signal: ", signal));
  }
  {
    absl::MutexLock lock(&mu_);
    // Once reaped, the pid (and group id) may belong to somebody else.
    if (exited_) return absl::FailedPreconditionError("process has exited");
    if (kill(-pid_, signal) == 0) return absl::OkStatus();
  }
  return ErrnoStatus("kill", errno);
}

void Process::SetExited(int wait_status) {
  {
    absl::MutexLock lock(&mu_);
    exited_ = true;
    wait_status_ = wait_status;
  }
  (void)exited_event_.Signal();
}

void Process::SetTimedOut() {
  absl::MutexLock lock(&mu_);
  if (exited_) return;
  timed_out_ = true;
  kill(-pid_, SIGKILL);
}

void Process::Pump() {
  // After the process exited, output still in the pipes is read, but a
  // descendant holding them open does not keep the exec going: the pump
  // ends when the pipes are quiet for 50 ms, or 500 ms after the exit.
  constexpr int kQuietMs = 50;
  constexpr int64_t kAfterExitNs = 500'000'000;
  int64_t exit_seen_ns = 0;
  while (stdout_fd_ || stderr_fd_) {
    // Stop reading while the buffer is full and somebody will drain it.
    {
      absl::MutexLock lock(&mu_);
      auto room = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return buffered_ < ProcessTable::kMaxBuffered || !attached_;
      };
      mu_.Await(absl::Condition(&room));
    }
    pollfd fds[3] = {{stdout_fd_.get(), POLLIN, 0},
                     {stderr_fd_.get(), POLLIN, 0},
                     {exit_seen_ns ? -1 : exited_event_.fd(), POLLIN, 0}};
    int n = poll(fds, 3, exit_seen_ns ? kQuietMs : -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      SBX_LOG(ERROR) << "poll: " << strerror(errno);
      break;
    }
    if (n == 0) break;  // quiet after the exit
    if (fds[2].revents) {
      (void)exited_event_.Consume();
      exit_seen_ns = MonotonicNs();
    }
    if (exit_seen_ns && MonotonicNs() - exit_seen_ns > kAfterExitNs) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].revents == 0) continue;
      UniqueFd& fd = i == 0 ? stdout_fd_ : stderr_fd_;
      std::string data(kReadSize, '\0');
      ssize_t got = read(fd.get(), data.data(), data.size());
      if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (got <= 0) {
        fd.reset();
        continue;
      }
      data.resize(static_cast<size_t>(got));
      absl::MutexLock lock(&mu_);
      if (!attached_) {
        // Nobody reads: keep the newest output, count what is dropped.
        while (!output_.empty() &&
               buffered_ + data.size() > ProcessTable::kMaxBuffered) {
          dropped_ += output_.front().data.size();
          buffered_ -= output_.front().data.size();
          output_.pop_front();
        }
      }
      buffered_ += data.size();
      ProcessEvent event;
      event.kind = i == 0 ? ProcessEvent::Kind::kStdout
                          : ProcessEvent::Kind::kStderr;
      event.data = std::move(data);
      event.dropped_before = std::exchange(dropped_, 0);
      output_.push_back(std::move(event));
    }
  }
  stdout_fd_.reset();
  stderr_fd_.reset();
  absl::MutexLock lock(&mu_);
  // Both pipes closed can come before the reaper saw the exit.
  mu_.Await(absl::Condition(&exited_));
  finished_ = true;
}

absl::StatusOr<std::unique_ptr<ProcessTable>> ProcessTable::Create() {
  SBX_ASSIGN_OR_RETURN(EventFd sigchld, EventFd::Create());
  SBX_ASSIGN_OR_RETURN(EventFd stop, EventFd::Create());
  int expected = -1;
  if (!g_sigchld_fd.compare_exchange_strong(expected, sigchld.fd())) {
    return absl::FailedPreconditionError(
        "a ProcessTable already exists in this process");
  }
  struct sigaction action = {};
  action.sa_handler = OnSigchld;
  action.sa_flags = SA_RESTART | SA_NOCLDSTOP;
  sigemptyset(&action.sa_mask);
  if (sigaction(SIGCHLD, &action, nullptr) != 0) {
    g_sigchld_fd = -1;
    return ErrnoStatus("sigaction SIGCHLD", errno);
  }
  // A process that exits with stdin unread makes our write to its pipe
  // fail with EPIPE; without this it would be a SIGPIPE that ends the
  // agent. (Children get SIGPIPE back at its default before exec.)
  signal(SIGPIPE, SIG_IGN);
  // Orphans of our children become ours (as PID 1 they are anyway), so a
  // killed process tree is reaped rather than left to the host's init.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  std::unique_ptr<ProcessTable> table(
      new ProcessTable(std::move(sigchld), std::move(stop)));
  table->reaper_ = std::thread([t = table.get()] { t->Reap(); });
  table->deadline_thread_ = std::thread([t = table.get()] { t->Deadlines(); });
  return table;
}

ProcessTable::~ProcessTable() {
  std::vector<std::shared_ptr<Process>> all;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    for (auto& [id, process] : by_id_) all.push_back(process);
  }
  for (auto& process : all) {
    (void)process->Signal(SIGKILL);
  }
  // Let the reaper collect what was just killed before it stops.
  {
    absl::MutexLock lock(&mu_);
    auto reaped = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return children_ == 0;
    };
    mu_.AwaitWithTimeout(absl::Condition(&reaped), absl::Seconds(5));
  }
  (void)stop_.Signal();
  reaper_.join();
  deadline_thread_.join();
  for (auto& process : all) process->CancelWaits();
  all.clear();
  {
    absl::MutexLock lock(&mu_);
    by_id_.clear();
    by_pid_.clear();
  }
  g_sigchld_fd = -1;
  signal(SIGCHLD, SIG_DFL);
}

absl::StatusOr<std::shared_ptr<Process>> ProcessTable::Spawn(
    const ExecSpec& spec) {
  if (spec.argv.empty()) return absl::InvalidArgumentError("empty argv");
  // Everything the child needs is prepared here: between vfork and exec it
  // may only make async-signal-safe calls.
  std::map<std::string, std::string> env = {
      {"PATH", kDefaultPath}, {"HOME", "/root"}, {"LANG", "C.UTF-8"},
      {"TERM", "xterm"}};
  for (const auto& [key, value] : spec.env) {
    if (key.empty() || key.find('=') != std::string::npos ||
        key.find('\0') != std::string::npos ||
        value.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad environment variable name: ", key));
    }
    env[key] = value;
  }
  for (const std::string& arg : spec.argv) {
    if (arg.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError("argv contains a NUL byte");
    }
  }
  if (spec.cwd.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("cwd contains a NUL byte");
  }
  SBX_ASSIGN_OR_RETURN(std::string program,
                       FindProgram(spec.argv[0], env["PATH"]));
  std::vector<std::string> env_strings;
  for (const auto& [key, value] : env) env_strings.push_back(key + "=" + value);
  std::vector<char*> argv_ptrs, env_ptrs;
  for (const std::string& arg : spec.argv) {
    argv_ptrs.push_back(const_cast<char*>(arg.c_str()));
  }
  argv_ptrs.push_back(nullptr);
  for (std::string& entry : env_strings) env_ptrs.push_back(entry.data());
  env_ptrs.push_back(nullptr);
  const char* cwd = spec.cwd.empty() ? "/" : spec.cwd.c_str();
  bool set_gid = spec.gid.has_value();
  gid_t gid = spec.gid.value_or(0);
  bool set_uid = spec.uid.has_value();
  uid_t uid = spec.uid.value_or(0);

  SBX_ASSIGN_OR_RETURN(auto in, MakePipe());
  SBX_ASSIGN_OR_RETURN(auto out, MakePipe());
  SBX_ASSIGN_OR_RETURN(auto err, MakePipe());
  SBX_ASSIGN_OR_RETURN(auto report, MakePipe());
  SBX_ASSIGN_OR_RETURN(EventFd exited_event, EventFd::Create());

  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("agent is stopping");
  if (by_id_.size() >= kMaxProcesses) EvictFinishedLocked();
  if (by_id_.size() >= kMaxProcesses) {
    return absl::ResourceExhaustedError(
        absl::StrCat("too many processes (", kMaxProcesses,
                     "); wait for some to finish"));
  }
  // The table lock is held across the spawn so the reaper, which needs it
  // to hand out a status, cannot see this child before it is in the table.
  ChildSetup setup = {.stdin_fd = in.first.get(),
                      .stdout_fd = out.second.get(),
                      .stderr_fd = err.second.get(),
                      .report_fd = report.second.get(),
                      .set_gid = set_gid,
                      .gid = gid,
                      .set_uid = set_uid,
                      .uid = uid,
                      .cwd = cwd,
                      .program = program.c_str(),
                      .argv = argv_ptrs.data(),
                      .envp = env_ptrs.data()};
  // vfork: the child borrows our memory until it execs, so nothing of the
  // agent's address space is copied (fork's page-table copy is what makes
  // an exec slow, more so under a software hypervisor).
  pid_t pid = vfork();
  if (pid < 0) return ErrnoStatus("vfork", errno);
  if (pid == 0) RunChild(setup);
  report.second.reset();
  in.first.reset();
  out.second.reset();
  err.second.reset();
  ChildFailure failure{};
  ssize_t n;
  // Returns when exec succeeded (the pipe closes) or a step failed.
  do {
    n = read(report.first.get(), &failure, sizeof(failure));
  } while (n < 0 && errno == EINTR);
  if (n == sizeof(failure)) {
    // The child is gone (or going); the reaper collects it.
    std::string step = failure.step >= 0 && failure.step < 7
                           ? kStepNames[failure.step]
                           : "exec";
    std::string object = failure.step == 5   ? std::string(setup.cwd)
                         : failure.step == 6 ? program
                                             : std::string();
    return object.empty() ? ErrnoStatus(step, failure.err)
                          : ErrnoStatus(step, object, failure.err);
  }
  ++children_;
  uint64_t id = next_id_++;
  std::shared_ptr<Process> process(
      new Process(id, pid, spec, std::move(in.second), std::move(out.first),
                  std::move(err.first), std::move(exited_event)));
  by_id_[id] = process;
  by_pid_[pid] = process;
  if (spec.timeout.count() > 0) {
    deadlines_.emplace(std::chrono::steady_clock::now() + spec.timeout,
                       process);
    deadline_changed_ = true;
  }
  process->pump_ = std::thread([p = process.get()] { p->Pump(); });
  return process;
}

std::shared_ptr<Process> ProcessTable::Find(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<Process>> ProcessTable::List() {
  absl::MutexLock lock(&mu_);
  std::vector<std::shared_ptr<Process>> all;
  for (auto& [id, process] : by_id_) all.push_back(process);
  return all;
}

void ProcessTable::Forget(uint64_t id) {
  std::shared_ptr<Process> process;
  {
    absl::MutexLock lock(&mu_);
    auto it = by_id_.find(id);
    if (it == by_id_.end()) return;
    process = std::move(it->second);
    by_id_.erase(it);
    EvictFinishedLocked();
  }
  // Destroying the last reference joins the pump thread: outside the lock.
  process.reset();
}

void ProcessTable::EvictFinishedLocked() {
  size_t finished = 0;
  for (auto& [id, process] : by_id_) finished += !process->running();
  for (auto it = by_id_.begin();
       it != by_id_.end() && finished > kMaxFinishedKept;) {
    if (!it->second->running() && !it->second->attached()) {
      it = by_id_.erase(it);
      --finished;
    } else {
      ++it;
    }
  }
}

void ProcessTable::Reap() {
  while (true) {
    pollfd fds[2] = {{sigchld_.fd(), POLLIN, 0}, {stop_.fd(), POLLIN, 0}};
    // A timeout as a safety net: a SIGCHLD that arrived before the handler
    // was installed still gets collected.
    int n = poll(fds, 2, 1000);
    if (n < 0 && errno != EINTR) {
      SBX_LOG(ERROR) << "reaper poll: " << strerror(errno);
      return;
    }
    if (fds[1].revents) return;
    if (fds[0].revents) (void)sigchld_.Consume();
    while (true) {
      int status = 0;
      pid_t pid = waitpid(-1, &status, WNOHANG);
      if (pid <= 0) break;
      std::shared_ptr<Process> process;
      {
        absl::MutexLock lock(&mu_);
        auto it = by_pid_.find(pid);
        if (it == by_pid_.end()) continue;  // an adopted orphan
        process = std::move(it->second);
        by_pid_.erase(it);
        --children_;
      }
      process->SetExited(status);
    }
  }
}

void ProcessTable::Deadlines() {
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    absl::Time wake = absl::InfiniteFuture();
    auto now = std::chrono::steady_clock::now();
    while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
      if (auto process = deadlines_.begin()->second.lock()) {
        process->SetTimedOut();
      }
      deadlines_.erase(deadlines_.begin());
    }
    if (!deadlines_.empty()) {
      wake = absl::Now() + absl::FromChrono(deadlines_.begin()->first - now);
    }
    deadline_changed_ = false;
    auto changed = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return deadline_changed_ || stopping_;
    };
    mu_.AwaitWithDeadline(absl::Condition(&changed), wake);
  }
}

}  // namespace sbx::agent
