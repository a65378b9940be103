#ifndef SBX_GUEST_FRAME_H_
#define SBX_GUEST_FRAME_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "google/protobuf/message_lite.h"

// The agent protocol's framing (proto/agent.proto): a 4-byte little-endian
// payload length, then the serialized message. Both ends use these over
// blocking stream sockets.

namespace sbx::agent {

// No frame carries more than this: a peer announcing a larger one is broken
// or hostile, and the connection ends.
inline constexpr size_t kMaxFrameBytes = size_t{4} << 20;

// The largest data payload either side puts into one Output or Chunk frame,
// well under kMaxFrameBytes.
inline constexpr size_t kMaxChunkBytes = size_t{256} << 10;

// Writes one frame. Retries on EINTR and short writes; MSG_NOSIGNAL, so a
// vanished peer is an error (EPIPE), not a SIGPIPE.
absl::Status WriteFrame(int fd, const google::protobuf::MessageLite& message);

// Reads one frame into `message`. Returns false at a clean end of stream
// (the peer closed between frames); an error for a stream that ends inside
// a frame, an oversized length, or bytes that do not parse.
absl::StatusOr<bool> ReadFrame(int fd, google::protobuf::MessageLite& message);

}  // namespace sbx::agent

#endif  // SBX_GUEST_FRAME_H_
