#ifndef SBX_GUEST_AGENT_H_
#define SBX_GUEST_AGENT_H_

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/event_fd.h"
#include "base/unique_fd.h"
#include "guest/init.h"
#include "guest/process.h"
#include "guest/protocol.h"

namespace sbx::agent {

inline constexpr char kAgentVersion[] = "0.1.0";

// What the agent does to the machine it runs on. In a guest that is the
// real thing; in host tests it refuses what would change the host.
class System {
 public:
  virtual ~System() = default;
  // Mixes `bytes` into the kernel's RNG and credits them.
  virtual absl::Status AddEntropy(std::string_view bytes) = 0;
  // Steps CLOCK_REALTIME.
  virtual absl::Status SetClock(int64_t unix_time_ns) = 0;
  // Flushes every filesystem.
  virtual absl::Status Sync() = 0;
  // Ends the machine (the VMM exits on the guest's reboot). Returns only on
  // failure.
  virtual absl::Status Reboot() = 0;
  // Makes `device` the root's writable upper layer (AttachUpperDisk),
  // running e2fsck and mkfs through `run`.
  virtual absl::Status AttachDisk(const std::string& device,
                                  const ProgramRunner& run) = 0;
};

// The guest's System: RNDADDENTROPY on /dev/urandom, clock_settime,
// sync(2), reboot(2), AttachUpperDisk.
std::unique_ptr<System> NewGuestSystem();
// For the agent run on a host (tests): Sync works; entropy, clock,
// reboot and disks are refused with FAILED_PRECONDITION.
std::unique_ptr<System> NewHostSystem();

struct AgentOptions {
  bool pid1 = false;         // reported by Ping
  System* system = nullptr;  // required; outlives the agent
  // The guest booted with sbx.upper=late: AttachDisk is allowed (once, and
  // only with pid1).
  bool late_disk = false;
};

// Serves the agent protocol (proto/agent.proto): one operation per
// connection, each connection on its own thread. Whatever a peer sends —
// bad frames, unknown operations, a vanished connection mid-exec — ends
// that connection (with an Error frame where one can still be sent),
// never the agent; a foreground process whose peer vanished is killed.
class Agent {
 public:
  // At most this many connections are served at once; more are closed.
  static constexpr size_t kMaxConnections = 256;

  static absl::StatusOr<std::unique_ptr<Agent>> Create(AgentOptions options);
  ~Agent();  // Stop()s

  // Accepts connections on the listening socket until Stop().
  absl::Status Serve(int listen_fd);
  // Makes Serve return, ends the connections being served and waits for
  // their threads. Callable from any thread.
  void Stop();

  // Serves one connection to its end (Serve calls it on a new thread).
  void HandleConnection(UniqueFd conn);

 private:
  Agent(AgentOptions options, std::unique_ptr<ProcessTable> processes,
        EventFd stop);

  absl::Status Dispatch(int fd, const Request& request);
  absl::Status HandleAttachDisk(int fd, const AttachDisk& request);
  // Runs a program (e2fsck, mkfs) through the process table to its end.
  absl::StatusOr<ProgramResult> RunToCompletion(
      const std::vector<std::string>& argv);
  // Sends the process's output and exit to `fd` as `attachment`, relaying
  // stdin (`first_input` first) and signals from it.
  absl::Status StreamProcess(int fd, const std::shared_ptr<Process>& process,
                             uint64_t attachment, bool kill_on_disconnect,
                             const Input& first_input);

  AgentOptions options_;
  std::unique_ptr<ProcessTable> processes_;
  EventFd stop_;
  const int64_t start_ns_;

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::set<int> connections_ ABSL_GUARDED_BY(mu_);  // fds being served
  // The device of the one AttachDisk this agent took ("": none yet).
  std::string attach_device_ ABSL_GUARDED_BY(mu_);
};

// A listening socket for Agent::Serve: a unix socket at `path` (replacing
// a stale one) or AF_VSOCK on `port` for any CID.
absl::StatusOr<UniqueFd> ListenUnix(std::string_view path);
absl::StatusOr<UniqueFd> ListenVsock(uint32_t port);

}  // namespace sbx::agent

#endif  // SBX_GUEST_AGENT_H_
