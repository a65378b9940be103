#ifndef SBX_GUEST_INIT_H_
#define SBX_GUEST_INIT_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// The agent's duties as the guest's PID 1, before it serves: the root
// filesystem and the standard mounts.

namespace sbx::agent {

// What the host asks of the guest on the kernel command line.
struct GuestParams {
  // sbx.upper=DEV: the writable disk holding the overlay's upper layer
  // (formatted as ext4 on first use). Empty: a tmpfs upper (nothing
  // persists), unless `upper_late`.
  std::string upper_device;
  // sbx.upper=late: no writable disk at boot. The root stays the read-only
  // rootfs (with tmpfs /tmp and /run) until the host sends AttachDisk
  // (AttachUpperDisk below): how templates boot, so that each sandbox
  // restored from one attaches its own disk.
  bool upper_late = false;
  // sbx.port=N: the vsock port the agent listens on.
  uint32_t port = 1024;
};

inline constexpr uint32_t kDefaultPort = 1024;

// Parses the sbx.* parameters of a kernel command line; an unknown sbx.*
// parameter or a bad value is an error.
absl::StatusOr<GuestParams> ParseGuestParams(const std::string& cmdline);

// How a program run to completion ended, and what it printed.
struct ProgramResult {
  bool signaled = false;
  int code = 0;        // the exit code, or the signal when `signaled`
  std::string output;  // stdout and stderr together (the last 8 KiB)
};
// Runs argv (argv[0] an absolute path) to completion. The agent's runner
// goes through its process table (whose reaper owns every child); before
// the table exists, RunProgramAtBoot does.
using ProgramRunner = std::function<absl::StatusOr<ProgramResult>(
    const std::vector<std::string>& argv)>;
absl::StatusOr<ProgramResult> RunProgramAtBoot(
    const std::vector<std::string>& argv);

// Mounts /proc and /dev, builds the root: the read-only root disk as the
// lower layer of an overlay whose upper layer is on `params.upper_device`
// (or a tmpfs), pivots into it, mounts /proc, /sys, /dev, /dev/pts,
// /dev/shm, /tmp and /run there, sets the hostname and brings up lo.
// With `params.upper_late` there is no overlay yet: the standard mounts go
// on the read-only root, and AttachUpperDisk builds the overlay later.
absl::Status SetUpGuest(const GuestParams& params);

// OK for the devices AttachDisk takes: /dev/vd[a-z] (INVALID_ARGUMENT for
// anything else).
absl::Status CheckDiskDevice(const std::string& device);

// AttachDisk (proto/agent.proto) in a guest booted with sbx.upper=late:
// checks `device` (e2fsck -p, through `run`; exit 1 and 2 mean fixed,
// 4 and up fail with its output) or formats it when it is blank (its
// first 64 KiB all zero; a disk holding something else is refused),
// mounts it, builds the overlay (rootfs lower, upper and work on the
// disk), moves /dev (with /dev/pts and /dev/shm), /proc, /sys, /tmp and
// /run into it and pivots the root there: every process started
// afterwards, and the agent itself, has the overlay as / (cwd /).
// REQUIRES: PID 1 of a guest set up by SetUpGuest with upper_late; called
// once.
absl::Status AttachUpperDisk(const std::string& device,
                             const ProgramRunner& run);

// Reads /proc/cmdline (mounting /proc if needed).
absl::StatusOr<std::string> ReadKernelCmdline();

}  // namespace sbx::agent

#endif  // SBX_GUEST_INIT_H_
