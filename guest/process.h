#ifndef SBX_GUEST_PROCESS_H_
#define SBX_GUEST_PROCESS_H_

#include <sys/types.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/event_fd.h"
#include "base/unique_fd.h"

namespace sbx::agent {

// CLOCK_MONOTONIC in nanoseconds (uptime, deadlines).
inline int64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// What to run (see Exec in proto/agent.proto).
struct ExecSpec {
  std::vector<std::string> argv;          // argv[0] searched in PATH
  std::map<std::string, std::string> env;  // over the default environment
  std::string cwd = "/";
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;
  bool background = false;
  std::chrono::milliseconds timeout{0};  // 0: none
};

// How a process ended.
struct ExitInfo {
  bool signaled = false;
  int code = 0;  // the exit code, or the signal when `signaled`
  bool timed_out = false;
};

// One event of a process as its reader sees it.
struct ProcessEvent {
  enum class Kind { kStdout, kStderr, kExited, kDetached, kCancelled };
  Kind kind = Kind::kCancelled;
  std::string data;             // kStdout, kStderr
  uint64_t dropped_before = 0;  // output dropped before this data
  ExitInfo exit;                // kExited
};

class ProcessTable;

// A process the agent started, in its own session (process group). Its
// stdout and stderr are read by a pump thread into a bounded buffer:
// while somebody is attached (or the process is a foreground one) a full
// buffer stops the pump, so a slow reader slows the process down as a pipe
// would; a detached background process never blocks on output: its oldest
// output is dropped instead and the count reported on re-attach.
class Process {
 public:
  ~Process();

  uint64_t id() const { return id_; }
  pid_t pid() const { return pid_; }
  const std::vector<std::string>& argv() const { return argv_; }
  bool background() const { return background_; }
  bool running() const;
  bool attached() const;

  // Makes the caller the one reader of this process's output and returns
  // its attachment number. A later Attach takes over: the earlier reader's
  // Next() returns kDetached.
  uint64_t Attach();
  // Stops reading, if `attachment` is still the current one.
  void Detach(uint64_t attachment);

  // Blocks until there is output, the process finished (after all its
  // output was read: kExited), `attachment` was taken over (kDetached), or
  // `*cancelled` became true and CancelWaits() was called (kCancelled).
  ProcessEvent Next(uint64_t attachment, const std::atomic<bool>* cancelled);
  // Wakes a Next() so it rechecks its `cancelled` flag.
  void CancelWaits();

  // Writes to stdin (blocks while the pipe is full); an error once stdin
  // was closed or the process stopped reading it.
  absl::Status WriteStdin(std::string_view data);
  void CloseStdin();

  // Whether its exit is being (or was) sent to a client: listings leave it
  // out.
  bool exit_reported() const { return exit_reported_.load(); }
  void set_exit_reported(bool reported) { exit_reported_.store(reported); }

  // Sends `signal` to the process group (while the process runs).
  absl::Status Signal(int signal);

 private:
  friend class ProcessTable;
  Process(uint64_t id, pid_t pid, ExecSpec spec, UniqueFd stdin_fd,
          UniqueFd stdout_fd, UniqueFd stderr_fd, EventFd exited_event);

  void Pump();  // the pump thread
  // Called by the table's reaper with the wait status.
  void SetExited(int wait_status);
  void SetTimedOut();

  const uint64_t id_;
  const pid_t pid_;
  const std::vector<std::string> argv_;
  const bool background_;
  std::atomic<bool> exit_reported_{false};

  UniqueFd stdout_fd_;  // pump thread only
  UniqueFd stderr_fd_;
  EventFd exited_event_;

  absl::Mutex stdin_mu_;
  UniqueFd stdin_fd_ ABSL_GUARDED_BY(stdin_mu_);

  mutable absl::Mutex mu_;
  bool attached_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t attachment_ ABSL_GUARDED_BY(mu_) = 0;
  bool exited_ ABSL_GUARDED_BY(mu_) = false;   // reaped
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // reaped and output drained
  bool timed_out_ ABSL_GUARDED_BY(mu_) = false;
  int wait_status_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<ProcessEvent> output_ ABSL_GUARDED_BY(mu_);
  size_t buffered_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;

  std::thread pump_;
};

// Starts processes and reaps every child of the agent (and, as PID 1 or a
// child subreaper, every orphan): one reaper thread calls waitpid(-1) and
// hands each status to its Process. Enforces timeouts with SIGKILL to the
// whole process group. Owns process-wide state: a SIGCHLD handler, SIGPIPE
// ignored, child-subreaper; one table per process.
class ProcessTable {
 public:
  // Output buffered per process before the pump stops or drops.
  static constexpr size_t kMaxBuffered = size_t{1} << 20;
  // Finished background processes kept for a late Attach.
  static constexpr size_t kMaxFinishedKept = 64;
  // Processes (running or kept) at once.
  static constexpr size_t kMaxProcesses = 1024;

  static absl::StatusOr<std::unique_ptr<ProcessTable>> Create();
  ~ProcessTable();  // kills what still runs

  // Starts `spec`. An error when the program cannot be found or executed,
  // the cwd or user is wrong (with the step that failed), or the table is
  // full.
  absl::StatusOr<std::shared_ptr<Process>> Spawn(const ExecSpec& spec);

  std::shared_ptr<Process> Find(uint64_t id);
  std::vector<std::shared_ptr<Process>> List();

  // Drops a process from the table once nobody needs it any more (a
  // finished foreground one, or a background one whose exit was read).
  void Forget(uint64_t id);

 private:
  ProcessTable(EventFd sigchld, EventFd stop)
      : sigchld_(std::move(sigchld)), stop_(std::move(stop)) {}
  void Reap();       // reaper thread
  void Deadlines();  // timeout thread
  void EvictFinishedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  size_t children_ ABSL_GUARDED_BY(mu_) = 0;  // spawned, not yet reaped
  std::map<uint64_t, std::shared_ptr<Process>> by_id_ ABSL_GUARDED_BY(mu_);
  std::map<pid_t, std::shared_ptr<Process>> by_pid_ ABSL_GUARDED_BY(mu_);
  std::multimap<std::chrono::steady_clock::time_point, std::weak_ptr<Process>>
      deadlines_ ABSL_GUARDED_BY(mu_);

  bool deadline_changed_ ABSL_GUARDED_BY(mu_) = false;

  EventFd sigchld_;  // SIGCHLD arrived (written by the signal handler)
  EventFd stop_;     // the reaper should stop
  std::thread reaper_;
  std::thread deadline_thread_;
};

}  // namespace sbx::agent

#endif  // SBX_GUEST_PROCESS_H_
