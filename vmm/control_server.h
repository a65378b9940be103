#ifndef SBX_VMM_CONTROL_SERVER_H_
#define SBX_VMM_CONTROL_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "base/event_fd.h"
#include "base/unique_fd.h"
#include "proto/control.pb.h"
#include "vmm/seccomp/policy.h"

namespace sbx::vmm {

class Machine;

// The control channel of a running sbx-vmm (proto/control.proto): a unix
// socket, mode 0600, served on a thread of its own (never a vCPU's), one
// client at a time; the next waits in the listen queue. Each Request frame
// gets one Response frame. A client that sends a frame that does not
// parse, announces an oversized one, or stalls inside a frame for more
// than kIoTimeout loses its connection and nothing else; a request with no
// request set is answered INVALID_ARGUMENT.
class ControlServer {
 public:
  using Handler =
      std::function<sbx::control::v1::Response(const sbx::control::v1::Request&)>;

  // How long a frame may take to arrive once its first byte is in, and a
  // reply to be taken.
  static constexpr int kIoTimeoutMs = 5000;

  // Listens on `path` (a stale socket there is replaced; anything else
  // there is an error) and serves `handler` until destroyed. With
  // seccomp.mode other than kOff, the serving thread installs the kControl
  // filter before it serves, and Create returns once it has. Errors:
  // kInvalidArgument for a path that does not fit or is taken; a filter
  // that cannot be built or installed.
  static absl::StatusOr<std::unique_ptr<ControlServer>> Create(
      const std::string& path, Handler handler, seccomp::Options seccomp = {});
  // Stops serving (a request being handled finishes first) and removes the
  // socket.
  ~ControlServer();

  const std::string& path() const { return path_; }

 private:
  ControlServer(std::string path, Handler handler, UniqueFd listen, EventFd stop)
      : path_(std::move(path)),
        handler_(std::move(handler)),
        listen_(std::move(listen)),
        stop_(std::move(stop)) {}
  void Serve();
  // Serves one connection until it ends or the server stops.
  void ServeClient(int fd);

  std::string path_;
  Handler handler_;
  UniqueFd listen_;
  EventFd stop_;
  std::thread thread_;
};

// The handler that drives `machine` (which must outlive the server):
// Pause, Resume, Snapshot (FULL or DIFF), Shutdown (Machine::Stop) and
// Stats.
ControlServer::Handler MachineControlHandler(Machine& machine);

}  // namespace sbx::vmm

#endif  // SBX_VMM_CONTROL_SERVER_H_
