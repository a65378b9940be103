#include "vmm/snapshot/format.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "base/status.h"
#include "base/status_macros.h"
#include "base/unique_fd.h"
#include "vmm/snapshot/crc32c.h"

namespace sbx::vmm::snapshot {
namespace {

void PutLe(uint8_t* out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out[i] = static_cast<uint8_t>(value >> (8 * i));
}

uint64_t GetLe(std::span<const uint8_t> in, size_t offset, int bytes) {
  uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) value |= uint64_t{in[offset + i]} << (8 * i);
  return value;
}

absl::Status WriteAll(int fd, std::span<const uint8_t> bytes,
                      const std::string& path) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus("write", path, errno);
    bytes = bytes.subspan(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<uint8_t> EncodeFrame(std::span<const uint8_t> payload,
                                 const FrameKind& kind) {
  std::vector<uint8_t> out(kHeaderBytes + payload.size() + kTrailerBytes);
  std::memcpy(out.data(), kind.magic, sizeof(kind.magic));
  PutLe(&out[8], kind.major, 2);
  PutLe(&out[10], kind.minor, 2);
  PutLe(&out[12], payload.size(), 4);
  if (!payload.empty()) {
    std::memcpy(&out[kHeaderBytes], payload.data(), payload.size());
  }
  const size_t body = kHeaderBytes + payload.size();
  PutLe(&out[body], Crc32c(std::span(out).first(body)), 4);
  return out;
}

absl::StatusOr<std::vector<uint8_t>> DecodeFrame(std::span<const uint8_t> file,
                                                 const FrameKind& kind) {
  if (file.size() < kHeaderBytes ||
      std::memcmp(file.data(), kind.magic, sizeof(kind.magic)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "not an sbx ", kind.name, " file (no ",
        absl::string_view(kind.magic, 7), " magic)"));
  }
  const uint64_t major = GetLe(file, 8, 2);
  const uint64_t minor = GetLe(file, 10, 2);
  if (major != kind.major) {
    return absl::FailedPreconditionError(absl::StrCat(
        kind.name, " format version ", major, ".", minor,
        " is not supported (this sbx-vmm reads ", kind.major, ".x)"));
  }
  const uint64_t length = GetLe(file, 12, 4);
  if (length > kMaxPayloadBytes) {
    return absl::DataLossError(absl::StrCat(kind.name, " payload of ", length,
                                            " bytes is over the limit of ",
                                            kMaxPayloadBytes));
  }
  const uint64_t expected = kHeaderBytes + length + kTrailerBytes;
  if (file.size() != expected) {
    return absl::DataLossError(absl::StrCat(
        kind.name, " file is ", file.size(), " bytes, its header says ", expected,
        file.size() < expected ? " (truncated)" : " (trailing garbage)"));
  }
  const uint32_t stored = static_cast<uint32_t>(GetLe(file, kHeaderBytes + length, 4));
  const uint32_t actual = Crc32c(file.first(kHeaderBytes + length));
  if (stored != actual) {
    return absl::DataLossError(absl::StrCat(
        kind.name, " CRC mismatch (corrupt file): stored ", absl::Hex(stored),
        ", computed ", absl::Hex(actual)));
  }
  auto payload = file.subspan(kHeaderBytes, length);
  return std::vector<uint8_t>(payload.begin(), payload.end());
}

absl::Status SyncParentDirectory(const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "."
                          : slash == 0              ? "/"
                                                    : path.substr(0, slash);
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus("open", dir, errno);
  if (::fsync(fd.get()) != 0) return ErrnoStatus("fsync", dir, errno);
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path,
                                 std::span<const uint8_t> bytes) {
  const std::string tmp = absl::StrCat(path, ".tmp");
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) return ErrnoStatus("open", tmp, errno);
  SBX_RETURN_IF_ERROR(WriteAll(fd.get(), bytes, tmp));
  if (::fsync(fd.get()) != 0) return ErrnoStatus("fsync", tmp, errno);
  fd.reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return ErrnoStatus("rename", tmp, errno);
  }
  return SyncParentDirectory(path);
}

absl::Status WriteVmState(const std::string& path,
                          const sbx::vmstate::v1::VmState& state) {
  std::string payload;
  // Deterministic: the same state always makes the same bytes (tests
  // compare them).
  {
    google::protobuf::io::StringOutputStream stream(&payload);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    if (!state.SerializeToCodedStream(&coded)) {
      return absl::InternalError("serializing vmstate failed");
    }
  }
  if (payload.size() > kMaxPayloadBytes) {
    return absl::InternalError(absl::StrCat("vmstate of ", payload.size(),
                                            " bytes is over the limit"));
  }
  std::vector<uint8_t> file = EncodeFrame(std::span(
      reinterpret_cast<const uint8_t*>(payload.data()), payload.size()));
  return WriteFileAtomically(path, file);
}

absl::StatusOr<std::vector<uint8_t>> ReadFramedFile(const std::string& path,
                                                    const FrameKind& kind) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus("open", path, errno);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus("fstat", path, errno);
  // Refuse before allocating: the largest file the frame allows.
  const uint64_t max = kHeaderBytes + uint64_t{kMaxPayloadBytes} + kTrailerBytes;
  if (static_cast<uint64_t>(st.st_size) > max) {
    return absl::DataLossError(absl::StrCat(path, ": ", st.st_size,
                                            " bytes, over the ", kind.name,
                                            " limit of ", max));
  }
  std::vector<uint8_t> file(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < file.size()) {
    ssize_t n = ::read(fd.get(), file.data() + done, file.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus("read", path, errno);
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  file.resize(done);
  absl::StatusOr<std::vector<uint8_t>> payload = DecodeFrame(file, kind);
  if (!payload.ok()) return Annotate(payload.status(), path);
  return payload;
}

absl::StatusOr<sbx::vmstate::v1::VmState> ReadVmState(const std::string& path) {
  SBX_ASSIGN_OR_RETURN(std::vector<uint8_t> payload,
                       ReadFramedFile(path, kVmStateFrame));
  sbx::vmstate::v1::VmState state;
  if (!state.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
    return absl::DataLossError(
        absl::StrCat(path, ": the vmstate payload is not a valid VmState"));
  }
  return state;
}

}  // namespace sbx::vmm::snapshot
