#ifndef SBX_VMM_SNAPSHOT_FORMAT_H_
#define SBX_VMM_SNAPSHOT_FORMAT_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/vmstate.pb.h"

namespace sbx::vmm::snapshot {

// The `vmstate` file of a snapshot: a serialized vmstate.v1.VmState in a
// frame that says what it is and whether it arrived whole (after
// Firecracker's snapshot/mod.rs):
//
//   offset  size  field (little-endian)
//        0     8  magic "SBXVMST\0"
//        8     2  format major version (kFormatMajor)
//       10     2  format minor version
//       12     4  payload length N, at most kMaxPayloadBytes
//       16     N  payload: the serialized VmState
//   16 + N     4  CRC-32C of bytes [0, 16 + N)
//
// A reader refuses another major version; a newer minor version only adds
// protobuf fields, which an older reader skips. The `workingset` file
// (working_set.h) uses the same frame with its own magic (FrameKind).
inline constexpr char kMagic[8] = {'S', 'B', 'X', 'V', 'M', 'S', 'T', '\0'};
inline constexpr uint16_t kFormatMajor = 1;
inline constexpr uint16_t kFormatMinor = 0;
inline constexpr size_t kHeaderBytes = 16;
inline constexpr size_t kTrailerBytes = 4;
// Far above any real VM's state (a few KiB per vCPU and device), far below
// what a corrupt length could make a reader allocate.
inline constexpr uint32_t kMaxPayloadBytes = 16 << 20;

// Which file a frame holds: every framed snapshot file has the layout
// above, with its own magic (a `workingset` is never read as a `vmstate`)
// and its own name in errors. Each kind has its own format version.
struct FrameKind {
  char magic[8];
  const char* name;  // "vmstate", "workingset"
  uint16_t major;
  uint16_t minor;
};
inline constexpr FrameKind kVmStateFrame = {
    {'S', 'B', 'X', 'V', 'M', 'S', 'T', '\0'}, "vmstate", kFormatMajor, kFormatMinor};
// The `workingset` file (working_set.h): a vmstate.v1.WorkingSet.
inline constexpr FrameKind kWorkingSetFrame = {
    {'S', 'B', 'X', 'W', 'S', 'E', 'T', '\0'}, "workingset", 1, 0};

// Frames `payload` (REQUIRES: at most kMaxPayloadBytes).
std::vector<uint8_t> EncodeFrame(std::span<const uint8_t> payload,
                                 const FrameKind& kind = kVmStateFrame);

// The payload of a framed file, or kDataLoss / kFailedPrecondition /
// kInvalidArgument with what is wrong: not a file of this kind (magic), a
// major version this build cannot read, a length over the cap, a truncated
// or overlong file, a CRC mismatch.
absl::StatusOr<std::vector<uint8_t>> DecodeFrame(
    std::span<const uint8_t> file, const FrameKind& kind = kVmStateFrame);

// Reads the framed file at `path` and returns its payload; refuses a file
// over the frame's maximum size before reading it. Errors name `path`.
absl::StatusOr<std::vector<uint8_t>> ReadFramedFile(const std::string& path,
                                                    const FrameKind& kind);

// Serializes, frames and writes `state` to `path` atomically: to a
// temporary file beside it, fsync, rename over `path`.
absl::Status WriteVmState(const std::string& path,
                          const sbx::vmstate::v1::VmState& state);

// Reads, checks and parses the vmstate file at `path`. Errors name it.
absl::StatusOr<sbx::vmstate::v1::VmState> ReadVmState(const std::string& path);

// Writes `bytes` to `path` atomically (temporary file, fsync, rename) and
// fsyncs the directory. For small files; the memory file has its own
// writer (memory_file.h).
absl::Status WriteFileAtomically(const std::string& path,
                                 std::span<const uint8_t> bytes);

// fsync of the directory holding `path`, so a rename into it is durable.
absl::Status SyncParentDirectory(const std::string& path);

}  // namespace sbx::vmm::snapshot

#endif  // SBX_VMM_SNAPSHOT_FORMAT_H_
