#ifndef SBX_GUEST_INIT_H_
#define SBX_GUEST_INIT_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// The agent's duties as the guest's PID 1, before it serves: the root
// filesystem and the standard mounts.

namespace sbx::agent {

// What the host asks of the guest on the kernel command line.
struct GuestParams {
  // sbx.upper=DEV: the writable disk holding the overlay's upper layer
  // (formatted as ext4 on first use). Empty: a tmpfs upper (nothing
  // persists).
  std::string upper_device;
  // sbx.port=N: the vsock port the agent listens on.
  uint32_t port = 1024;
};

inline constexpr uint32_t kDefaultPort = 1024;

// Parses the sbx.* parameters of a kernel command line; an unknown sbx.*
// parameter or a bad value is an error.
absl::StatusOr<GuestParams> ParseGuestParams(const std::string& cmdline);

// Mounts /proc and /dev, builds the root: the read-only root disk as the
// lower layer of an overlay whose upper layer is on `params.upper_device`
// (or a tmpfs), pivots into it, mounts /proc, /sys, /dev, /dev/pts,
// /dev/shm, /tmp and /run there, sets the hostname and brings up lo.
absl::Status SetUpGuest(const GuestParams& params);

// Reads /proc/cmdline (mounting /proc if needed).
absl::StatusOr<std::string> ReadKernelCmdline();

}  // namespace sbx::agent

#endif  // SBX_GUEST_INIT_H_
