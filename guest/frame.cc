#include "guest/frame.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "base/status.h"

namespace sbx::agent {
namespace {

absl::Status WriteAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = send(fd, data, size, MSG_NOSIGNAL);
    if (n < 0 && errno == ENOTSOCK) n = write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("write frame", errno);
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// Reads exactly `size` bytes. Returns the number read before a clean end of
// stream (less than `size` only then).
absl::StatusOr<size_t> ReadFull(int fd, char* data, size_t size) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = read(fd, data + done, size - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("read frame", errno);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

}  // namespace

absl::Status WriteFrame(int fd, const google::protobuf::MessageLite& message) {
  size_t size = message.ByteSizeLong();
  if (size > kMaxFrameBytes) {
    return absl::InvalidArgumentError("frame of " + std::to_string(size) +
                                      " bytes is over the limit");
  }
  std::string buffer(4 + size, '\0');
  for (int i = 0; i < 4; ++i) buffer[i] = static_cast<char>(size >> (8 * i));
  if (!message.SerializeToArray(buffer.data() + 4, static_cast<int>(size))) {
    return absl::InternalError("cannot serialize frame");
  }
  return WriteAll(fd, buffer.data(), buffer.size());
}

absl::StatusOr<bool> ReadFrame(int fd, google::protobuf::MessageLite& message) {
  unsigned char header[4];
  absl::StatusOr<size_t> got =
      ReadFull(fd, reinterpret_cast<char*>(header), sizeof(header));
  if (!got.ok()) return got.status();
  if (*got == 0) return false;
  if (*got < sizeof(header)) {
    return absl::DataLossError("stream ended inside a frame header");
  }
  size_t size = size_t{header[0]} | size_t{header[1]} << 8 |
                size_t{header[2]} << 16 | size_t{header[3]} << 24;
  if (size > kMaxFrameBytes) {
    return absl::InvalidArgumentError("peer announced a frame of " +
                                      std::to_string(size) +
                                      " bytes, over the limit");
  }
  std::string payload(size, '\0');
  got = ReadFull(fd, payload.data(), size);
  if (!got.ok()) return got.status();
  if (*got < size) return absl::DataLossError("stream ended inside a frame");
  if (!message.ParseFromString(payload)) {
    return absl::InvalidArgumentError("frame does not parse");
  }
  return true;
}

}  // namespace sbx::agent
