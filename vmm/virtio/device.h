#ifndef SBX_VMM_VIRTIO_DEVICE_H_
#define SBX_VMM_VIRTIO_DEVICE_H_

#include <cstddef>
#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "proto/vmstate.pb.h"
#include "vmm/memory/guest_memory.h"
#include "vmm/virtio/interrupt.h"
#include "vmm/virtio/queue.h"

namespace sbx::vmm::virtio {

// Device IDs (virtio 1.2 §5).
inline constexpr uint32_t kDeviceTypeBlock = 2;
inline constexpr uint32_t kDeviceTypeEntropy = 4;
inline constexpr uint32_t kDeviceTypeVsock = 19;

// Reserved feature bits (§6) that the transport and Queue implement for
// every device.
inline constexpr uint64_t kFeatureIndirectDesc = uint64_t{1} << 28;
inline constexpr uint64_t kFeatureEventIdx = uint64_t{1} << 29;
inline constexpr uint64_t kFeatureVersion1 = uint64_t{1} << 32;

// One virtio device (blk, rng, vsock): its features, configuration space
// and queue processing. It knows nothing of the transport that exposes it
// to the guest: the transport negotiates features, holds the queues'
// configuration, and calls Activate() once the driver sets DRIVER_OK.
//
// The transport serializes every call into a device (never two at once),
// so a device needs no lock for state only these calls touch.
class Device {
 public:
  virtual ~Device() = default;

  // The virtio device ID (§5), e.g. kDeviceTypeBlock.
  virtual uint32_t device_type() const = 0;

  // The device-specific feature bits it offers (§6: bits 0-23 and 50+).
  // The transport adds VIRTIO_F_VERSION_1, VIRTIO_F_INDIRECT_DESC and
  // VIRTIO_F_EVENT_IDX itself.
  virtual uint64_t device_features() const = 0;

  // One entry per queue: its maximum size (a power of 2, at most
  // kMaxQueueSize). The number of entries is the number of queues.
  virtual std::span<const uint16_t> queue_max_sizes() const = 0;

  // Device configuration space access (§2.5) at `offset` from its start;
  // data is 1, 2 or 4 bytes. Bytes beyond the space read as zero; writes
  // the device does not accept are ignored.
  virtual void ReadConfig(uint64_t offset, std::span<uint8_t> data) const = 0;
  virtual void WriteConfig(uint64_t offset, std::span<const uint8_t> data) = 0;

  // The driver set DRIVER_OK (§3.1.1). `queues` has one entry per
  // queue_max_sizes() entry, each either not ready or validated
  // (Queue::Validate), with event_idx/indirect_desc set from
  // `acked_features`. `mem`, `queues` and `interrupt` stay valid until
  // Reset(). A non-OK status (e.g. a queue the device needs is not ready)
  // makes the transport report DEVICE_NEEDS_RESET.
  virtual absl::Status Activate(GuestMemory& mem, uint64_t acked_features,
                                std::span<Queue> queues,
                                Interrupt& interrupt) = 0;

  // The driver kicked queue `index` (< number of queues), only ever called
  // after a successful Activate(): process what is available, add used
  // buffers, and raise interrupt.kUsedBuffer where Queue::NeedsInterrupt
  // says so.
  virtual void ProcessQueue(size_t index) = 0;

  // Device reset (§2.4): forget the activation (memory, queues, interrupt)
  // and return to the state before it. Called whether or not the device
  // was activated.
  virtual void Reset() = 0;

  // Snapshots: the device's own state (the transport saves the queues,
  // the feature negotiation and the interrupt status). Called with the VM
  // paused. RestoreState is called on a device built from the same
  // configuration, after Activate() if the saved device was active; it
  // fails with kFailedPrecondition when the state does not fit this device
  // (another device type, disk size, CID).
  virtual void SaveState(sbx::vmstate::v1::VirtioDeviceState& state) const = 0;
  virtual absl::Status RestoreState(
      const sbx::vmstate::v1::VirtioDeviceState& state) = 0;
};

// Serves a read of a device's configuration space held in `config`: bytes
// beyond its end read as zero.
inline void ReadConfigBytes(std::span<const uint8_t> config, uint64_t offset,
                            std::span<uint8_t> data) {
  for (size_t i = 0; i < data.size(); ++i) {
    bool inside = offset < config.size() && i < config.size() - offset;
    data[i] = inside ? config[offset + i] : 0;
  }
}

}  // namespace sbx::vmm::virtio

#endif  // SBX_VMM_VIRTIO_DEVICE_H_
