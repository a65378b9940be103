#ifndef SBX_VMM_VIRTIO_RNG_RNG_H_
#define SBX_VMM_VIRTIO_RNG_RNG_H_

#include <array>
#include <cstdint>
#include <span>

#include "vmm/virtio/device.h"

namespace sbx::vmm::virtio {

// virtio-rng, the entropy device (virtio 1.2 §5.4): fills each
// device-writable buffer the driver posts with bytes from the host's
// getrandom(2), at most kMaxBytesPerRequest per chain. No features, no
// configuration space, one request queue.
class Rng : public Device {
 public:
  static constexpr uint16_t kQueueSize = 256;
  static constexpr uint32_t kMaxBytesPerRequest = 64 * 1024;

  Rng() = default;

  uint32_t device_type() const override { return kDeviceTypeEntropy; }
  uint64_t device_features() const override { return 0; }
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

  // Fills the chain's writable buffers; returns the bytes written.
  uint32_t Fill(const DescriptorChain& chain);

  // Set by Activate, cleared by Reset.
  GuestMemory* mem_ = nullptr;
  Queue* queue_ = nullptr;
  Interrupt* interrupt_ = nullptr;
};

}  // namespace sbx::vmm::virtio

#endif  // SBX_VMM_VIRTIO_RNG_RNG_H_
