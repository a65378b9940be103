#include "vmm/virtio/blk/block.h"

#include <limits.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "base/logging.h"
#include "base/status.h"

namespace sbx::vmm::virtio {
namespace {

// Feature bits (§5.2.3).
constexpr uint64_t kFeatureSegMax = uint64_t{1} << 2;
constexpr uint64_t kFeatureRo = uint64_t{1} << 5;
constexpr uint64_t kFeatureFlush = uint64_t{1} << 9;

// Request types and status values (§5.2.6).
constexpr uint32_t kTypeIn = 0;
constexpr uint32_t kTypeOut = 1;
constexpr uint32_t kTypeFlush = 4;
constexpr uint32_t kTypeGetId = 8;
constexpr uint8_t kStatusOk = 0;
constexpr uint8_t kStatusIoErr = 1;
constexpr uint8_t kStatusUnsupp = 2;

constexpr size_t kIdBytes = 20;  // VIRTIO_BLK_ID_BYTES

// struct virtio_blk_req's header (§5.2.6), little-endian like the host.
struct RequestHeader {
  uint32_t type;
  uint32_t reserved;
  uint64_t sector;
};
static_assert(sizeof(RequestHeader) == 16);

// Offsets in struct virtio_blk_config (§5.2.4).
constexpr size_t kConfigCapacity = 0;
constexpr size_t kConfigSegMax = 12;

// Host views of `len` bytes starting `skip` bytes into `descs`.
absl::StatusOr<std::vector<iovec>> GuestIovecs(
    GuestMemory& mem, std::span<const Descriptor> descs, uint64_t skip,
    uint64_t len) {
  std::vector<iovec> iov;
  for (const Descriptor& d : descs) {
    if (len == 0) break;
    if (skip >= d.len) {
      skip -= d.len;
      continue;
    }
    uint64_t n = std::min<uint64_t>(d.len - skip, len);
    absl::StatusOr<std::span<uint8_t>> slice = mem.Slice(d.addr + skip, n);
    if (!slice.ok()) return slice.status();
    iov.push_back({.iov_base = slice->data(), .iov_len = n});
    len -= n;
    skip = 0;
  }
  if (len != 0) return absl::OutOfRangeError("chain shorter than the request");
  return iov;
}

// Moves all of `iov` to (write) or from the file at `offset`, retrying
// short transfers. `iov` holds no empty entries, so a read of 0 bytes is
// the end of the file.
absl::Status TransferAll(int fd, bool write, std::vector<iovec> iov,
                         uint64_t offset) {
  size_t first = 0;
  while (first < iov.size()) {
    int count = static_cast<int>(std::min<size_t>(iov.size() - first, IOV_MAX));
    ssize_t n = write ? ::pwritev(fd, &iov[first], count,
                                  static_cast<off_t>(offset))
                      : ::preadv(fd, &iov[first], count,
                                 static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(write ? "pwritev" : "preadv", errno);
    }
    if (n == 0) {
      return absl::DataLossError(write ? "pwritev wrote nothing"
                                       : "preadv hit the end of the file");
    }
    offset += static_cast<uint64_t>(n);
    auto left = static_cast<size_t>(n);
    while (left > 0) {
      if (left >= iov[first].iov_len) {
        left -= iov[first].iov_len;
        ++first;
      } else {
        iov[first].iov_base = static_cast<uint8_t*>(iov[first].iov_base) + left;
        iov[first].iov_len -= left;
        left = 0;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Block>> Block::Create(UniqueFd fd,
                                                     Options options) {
  if (!fd.valid()) return absl::InvalidArgumentError("no disk file");
  if (options.serial.size() > kIdBytes) {
    return absl::InvalidArgumentError("disk serial \"" + options.serial +
                                      "\" is longer than 20 bytes");
  }
  // SEEK_END gives the size of regular files and block devices alike.
  off_t size = ::lseek(fd.get(), 0, SEEK_END);
  if (size < 0) return ErrnoStatus("lseek disk", errno);
  uint64_t sectors = static_cast<uint64_t>(size) / kSectorSize;
  return std::unique_ptr<Block>(
      new Block(std::move(fd), sectors, std::move(options)));
}

Block::Block(UniqueFd fd, uint64_t capacity_sectors, Options options)
    : fd_(std::move(fd)),
      capacity_sectors_(capacity_sectors),
      options_(std::move(options)) {
  std::memcpy(&config_[kConfigCapacity], &capacity_sectors_,
              sizeof(capacity_sectors_));
  // One descriptor each for the header and the status byte.
  uint32_t seg_max = kQueueSize - 2;
  std::memcpy(&config_[kConfigSegMax], &seg_max, sizeof(seg_max));
}

uint64_t Block::device_features() const {
  uint64_t features = kFeatureSegMax | kFeatureFlush;
  if (options_.read_only) features |= kFeatureRo;
  return features;
}

void Block::ReadConfig(uint64_t offset, std::span<uint8_t> data) const {
  ReadConfigBytes(config_, offset, data);
}

void Block::WriteConfig(uint64_t offset, std::span<const uint8_t>) {
  // Only `writeback` is writable, and only with VIRTIO_BLK_F_CONFIG_WCE,
  // which is not offered.
  SBX_LOG_EVERY_N_SEC(WARNING, 1)
      << "virtio-blk: ignoring config write at " << offset;
}

absl::Status Block::Activate(GuestMemory& mem, uint64_t,
                             std::span<Queue> queues, Interrupt& interrupt) {
  if (queues.size() != 1 || !queues[0].ready) {
    return absl::FailedPreconditionError("virtio-blk: request queue not ready");
  }
  mem_ = &mem;
  queue_ = &queues[0];
  interrupt_ = &interrupt;
  return absl::OkStatus();
}

void Block::Reset() {
  mem_ = nullptr;
  queue_ = nullptr;
  interrupt_ = nullptr;
}

void Block::ProcessQueue(size_t) {
  if (queue_ == nullptr) return;
  while (std::optional<DescriptorChain> chain = queue_->Pop(*mem_)) {
    uint32_t written = HandleRequest(*chain);
    absl::Status s = queue_->AddUsed(*mem_, chain->head_index(), written);
    if (!s.ok()) {
      SBX_LOG_EVERY_N_SEC(WARNING, 1) << "virtio-blk: " << s;
      break;
    }
  }
  if (queue_->NeedsInterrupt(*mem_)) interrupt_->Raise(Interrupt::kUsedBuffer);
}

uint32_t Block::HandleRequest(const DescriptorChain& chain) {
  // §5.2.6: the status byte is the last device-writable byte.
  if (chain.writable_bytes() == 0) {
    SBX_LOG_EVERY_N_SEC(WARNING, 1)
        << "virtio-blk: request without a status byte";
    return 0;
  }
  uint64_t data_written = 0;
  uint8_t status = Execute(chain, &data_written);
  absl::Status s = chain.WriteWritable(*mem_, chain.writable_bytes() - 1,
                                       std::span(&status, 1));
  if (!s.ok()) {
    SBX_LOG_EVERY_N_SEC(WARNING, 1) << "virtio-blk: writing status: " << s;
    return 0;
  }
  // Up to kQueueSize buffers of up to 4 GiB each can add up to more than
  // the used ring's 32-bit length holds: clamp rather than wrap.
  return static_cast<uint32_t>(
      std::min<uint64_t>(data_written + 1, UINT32_MAX));
}

bool Block::InRange(uint64_t sector, uint64_t len) const {
  if (len % kSectorSize != 0) return false;
  uint64_t sectors = len / kSectorSize;
  return sector <= capacity_sectors_ && sectors <= capacity_sectors_ - sector;
}

uint8_t Block::Execute(const DescriptorChain& chain, uint64_t* data_written) {
  RequestHeader header;
  absl::Status s = chain.ReadReadable(
      *mem_, 0,
      std::span(reinterpret_cast<uint8_t*>(&header), sizeof(header)));
  if (!s.ok()) {
    SBX_LOG_EVERY_N_SEC(WARNING, 1) << "virtio-blk: no request header";
    return kStatusIoErr;
  }
  // The data follows the header (T_OUT) or precedes the status byte (T_IN,
  // T_GET_ID).
  const uint64_t out_len = chain.readable_bytes() - sizeof(header);
  const uint64_t in_len = chain.writable_bytes() - 1;

  switch (header.type) {
    case kTypeIn:
    case kTypeOut: {
      bool write = header.type == kTypeOut;
      if (write && options_.read_only) return kStatusIoErr;
      uint64_t len = write ? out_len : in_len;
      if (!InRange(header.sector, len)) {
        SBX_LOG_EVERY_N_SEC(WARNING, 1)
            << "virtio-blk: " << (write ? "write" : "read") << " of " << len
            << " bytes at sector " << header.sector << " is outside the "
            << capacity_sectors_ << "-sector disk";
        return kStatusIoErr;
      }
      absl::StatusOr<std::vector<iovec>> iov =
          write ? GuestIovecs(*mem_, chain.readable(), sizeof(header), len)
                : GuestIovecs(*mem_, chain.writable(), 0, len);
      if (iov.ok()) {
        s = TransferAll(fd_.get(), write, *std::move(iov),
                        header.sector * kSectorSize);
      } else {
        s = iov.status();
      }
      if (!s.ok()) {
        SBX_LOG_EVERY_N_SEC(WARNING, 1) << "virtio-blk: " << s;
        return kStatusIoErr;
      }
      if (!write) *data_written = len;
      return kStatusOk;
    }
    case kTypeFlush:
      if (::fdatasync(fd_.get()) != 0) {
        SBX_LOG_EVERY_N_SEC(WARNING, 1)
            << "virtio-blk: " << ErrnoStatus("fdatasync", errno);
        return kStatusIoErr;
      }
      return kStatusOk;
    case kTypeGetId: {
      // A NUL-padded string of up to 20 bytes; a shorter buffer gets a
      // prefix.
      std::array<uint8_t, kIdBytes> id{};
      std::memcpy(id.data(), options_.serial.data(), options_.serial.size());
      size_t n = std::min<uint64_t>(in_len, kIdBytes);
      s = chain.WriteWritable(*mem_, 0, std::span(id).first(n));
      if (!s.ok()) return kStatusIoErr;
      *data_written = n;
      return kStatusOk;
    }
    default:
      SBX_LOG_EVERY_N_SEC(INFO, 1)
          << "virtio-blk: unsupported request type " << header.type;
      return kStatusUnsupp;
  }
}

void Block::SaveState(sbx::vmstate::v1::VirtioDeviceState& state) const {
  sbx::vmstate::v1::BlockState* block = state.mutable_block();
  block->set_config(std::string(config_.begin(), config_.end()));
  block->set_read_only(options_.read_only);
  block->set_serial(options_.serial);
}

absl::Status Block::RestoreState(
    const sbx::vmstate::v1::VirtioDeviceState& state) {
  if (!state.has_block()) {
    return absl::FailedPreconditionError("virtio-blk: the snapshot's device is not a disk");
  }
  // The guest has read the disk's geometry and features: the disk it finds
  // after a restore must look the same.
  const sbx::vmstate::v1::BlockState& block = state.block();
  if (block.config() != std::string(config_.begin(), config_.end())) {
    uint64_t saved_capacity = 0;
    std::memcpy(&saved_capacity, block.config().data(),
                std::min(block.config().size(), sizeof(saved_capacity)));
    return absl::FailedPreconditionError(
        "virtio-blk: the disk has " + std::to_string(capacity_sectors_) +
        " sectors, the snapshot's had " + std::to_string(saved_capacity));
  }
  if (block.read_only() != options_.read_only) {
    return absl::FailedPreconditionError(
        std::string("virtio-blk: the snapshot's disk was ") +
        (block.read_only() ? "read-only" : "read-write") + ", this one is not");
  }
  return absl::OkStatus();
}

}  // namespace sbx::vmm::virtio
