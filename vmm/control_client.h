#ifndef SBX_VMM_CONTROL_CLIENT_H_
#define SBX_VMM_CONTROL_CLIENT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "base/unique_fd.h"
#include "proto/control.pb.h"

namespace sbx::vmm {

// A client of sbx-vmm's control socket (control_server.h), for sandboxd
// and tests. Blocking; one request at a time. Each call returns the VMM's
// answer as a Status (the Response's code and message), or the transport
// error (kUnavailable) when the connection failed.
class ControlClient {
 public:
  static absl::StatusOr<std::unique_ptr<ControlClient>> Connect(
      const std::string& path);

  absl::Status Pause();
  absl::Status Resume();
  absl::StatusOr<sbx::control::v1::SnapshotResult> Snapshot(
      const std::string& dir);
  absl::StatusOr<sbx::control::v1::SnapshotResult> SnapshotDiff(
      const std::string& dir, const std::string& base_dir);
  absl::Status Shutdown();
  absl::StatusOr<sbx::control::v1::Stats> Stats();

  // Sends `request`, returns the raw Response (transport errors only).
  absl::StatusOr<sbx::control::v1::Response> Call(
      const sbx::control::v1::Request& request);

  int fd() const { return fd_.get(); }

 private:
  explicit ControlClient(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

}  // namespace sbx::vmm

#endif  // SBX_VMM_CONTROL_CLIENT_H_
