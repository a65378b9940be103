#ifndef SBX_VMM_VIRTIO_BLK_BLOCK_H_
#define SBX_VMM_VIRTIO_BLK_BLOCK_H_

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "base/unique_fd.h"
#include "vmm/virtio/device.h"

namespace sbx::vmm::virtio {

// virtio-blk (virtio 1.2 §5.2) backed by a host file or block device. One
// request queue; requests T_IN, T_OUT, T_FLUSH and T_GET_ID, each done
// with one preadv/pwritev/fdatasync straight between the file and guest
// memory. Anything else completes with VIRTIO_BLK_S_UNSUPP; a request the
// device cannot or may not do (out of range, write to a read-only disk,
// malformed, host I/O error) with VIRTIO_BLK_S_IOERR.
//
// Features offered: VIRTIO_BLK_F_FLUSH (writes reach the host page cache;
// T_FLUSH makes them durable), VIRTIO_BLK_F_SEG_MAX (any chain the queue
// accepts is served, so seg_max = queue size - 2), VIRTIO_BLK_F_RO for a
// read-only disk. The capacity is the file size in 512-byte sectors,
// rounded down, fixed at creation.
class Block : public Device {
 public:
  struct Options {
    bool read_only = false;
    // Returned by T_GET_ID; at most 20 bytes (§5.2.6).
    std::string serial;
  };

  static constexpr uint16_t kQueueSize = 256;
  static constexpr uint64_t kSectorSize = 512;

  // Takes ownership of `fd`, open for reading (and writing unless
  // read_only). Fails if its size cannot be determined or the serial is
  // too long.
  static absl::StatusOr<std::unique_ptr<Block>> Create(UniqueFd fd,
                                                       Options options);

  uint64_t capacity_sectors() const { return capacity_sectors_; }

  uint32_t device_type() const override { return kDeviceTypeBlock; }
  uint64_t device_features() const override;
  std::span<const uint16_t> queue_max_sizes() const override {
    return kQueueMaxSizes;
  }
  void ReadConfig(uint64_t offset, std::span<uint8_t> data) const override;
  void WriteConfig(uint64_t offset, std::span<const uint8_t> data) override;
  absl::Status Activate(GuestMemory& mem, uint64_t acked_features,
                        std::span<Queue> queues,
                        Interrupt& interrupt) override;
  void ProcessQueue(size_t index) override;
  void Reset() override;
  void SaveState(sbx::vmstate::v1::VirtioDeviceState& state) const override;
  absl::Status RestoreState(
      const sbx::vmstate::v1::VirtioDeviceState& state) override;

 private:
  static constexpr std::array<uint16_t, 1> kQueueMaxSizes = {kQueueSize};

  Block(UniqueFd fd, uint64_t capacity_sectors, Options options);

  // Serves one request; returns the number of bytes written into the
  // chain (data and status byte) for the used ring.
  uint32_t HandleRequest(const DescriptorChain& chain);
  // Does what the request asks; returns the status byte and sets
  // *data_written to the bytes of data written into the chain.
  uint8_t Execute(const DescriptorChain& chain, uint64_t* data_written);
  // True if [sector, sector + len / 512) is within the disk and len is a
  // whole number of sectors.
  bool InRange(uint64_t sector, uint64_t len) const;

  const UniqueFd fd_;
  const uint64_t capacity_sectors_;
  const Options options_;
  std::array<uint8_t, 24> config_{};  // struct virtio_blk_config (§5.2.4)

  // Set by Activate, cleared by Reset.
  GuestMemory* mem_ = nullptr;
  Queue* queue_ = nullptr;
  Interrupt* interrupt_ = nullptr;
};

}  // namespace sbx::vmm::virtio

#endif  // SBX_VMM_VIRTIO_BLK_BLOCK_H_
