#ifndef SBX_VMM_VIRTIO_MMIO_TRANSPORT_H_
#define SBX_VMM_VIRTIO_MMIO_TRANSPORT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/event_fd.h"
#include "vmm/devices/bus.h"
#include "vmm/memory/guest_memory.h"
#include "vmm/virtio/device.h"
#include "vmm/virtio/interrupt.h"
#include "vmm/virtio/queue.h"

namespace sbx::vmm::virtio {

// The virtio-mmio transport, modern interface (Version 2, virtio 1.2
// §4.2.2): the register file a driver uses to discover a device, negotiate
// features (§3.1.1), configure queues, kick them and acknowledge
// interrupts, with the device's configuration space at 0x100. One
// transport exposes one Device.
//
// Registers are 32 bits wide and must be accessed with aligned 32-bit
// accesses (§4.2.2.1); the configuration space takes 8-, 16- and 32-bit
// accesses. Anything else is ignored (reads as zero) and logged
// rate-limited, as is every driver write that breaks the protocol.
//
// Thread-safe: Read/Write come from vCPU threads and NotifyQueue from the
// VMM's event loop; one mutex serializes them, and with them every call
// into the device.
class MmioTransport : public BusDevice {
 public:
  // Size of the MMIO window, registers plus configuration space.
  static constexpr uint64_t kSize = 0x200;
  // Offset of QueueNotify, where the VMM registers a KVM ioeventfd per
  // queue (datamatch = queue index) and calls NotifyQueue when it fires.
  static constexpr uint64_t kQueueNotifyOffset = 0x50;
  static constexpr uint64_t kConfigOffset = 0x100;

  // `mem` must outlive the transport. `irq` is signalled whenever the
  // device raises an interrupt (in the VMM: a KVM irqfd). Fails if the
  // device's queue sizes are unusable.
  static absl::StatusOr<std::unique_ptr<MmioTransport>> Create(
      GuestMemory& mem, std::unique_ptr<Device> device, EventFd irq);

  ~MmioTransport() override;

  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

  // The driver kicked queue `index` (through the ioeventfd on
  // QueueNotify); does what a QueueNotify write would.
  void NotifyQueue(uint32_t index);

  // The interrupt state; irq() is the eventfd given to Create.
  const Interrupt& interrupt() const { return interrupt_; }

  // The Status register (§2.1), for the VMM and tests.
  uint32_t status() const;
  // True once the driver set DRIVER_OK and the device accepted it.
  bool activated() const;

  // Snapshots: the register file, the feature negotiation, every queue,
  // the interrupt status and the device's state (Device::SaveState).
  // REQUIRES: no vCPU and no event-loop handler is using the transport
  // (the VM is paused, or not running yet).
  sbx::vmstate::v1::VirtioTransportState SaveState() const;
  // Restores a transport built for the same kind of device and still in
  // its reset state. If the saved transport was activated, its ready
  // queues are validated against guest memory and the device activated
  // over them before its own state is restored. Errors:
  // kFailedPrecondition when the state is for another device or does not
  // fit guest memory; the transport is then reset.
  absl::Status RestoreState(const sbx::vmstate::v1::VirtioTransportState& state);

 private:
  MmioTransport(GuestMemory& mem, std::unique_ptr<Device> device,
                EventFd irq);

  uint32_t ReadRegister(uint64_t offset) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WriteRegister(uint64_t offset, uint32_t value)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetStatus(uint32_t value) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ResetDevice() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Activate() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ProcessQueue(uint32_t index) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets DEVICE_NEEDS_RESET and tells the driver (§2.1.2).
  void SetNeedsReset() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Every feature bit offered: the device's plus the transport's.
  uint64_t OfferedFeatures() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The selected queue if it exists and its configuration may be written
  // now (FEATURES_OK set, DRIVER_OK not, queue not ready), else nullptr.
  Queue* WritableQueue(uint64_t offset) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Queue* SelectedQueue() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  GuestMemory& mem_;
  Interrupt interrupt_;

  mutable absl::Mutex mu_;
  const std::unique_ptr<Device> device_ ABSL_PT_GUARDED_BY(mu_);
  std::vector<Queue> queues_ ABSL_GUARDED_BY(mu_);
  uint32_t status_ ABSL_GUARDED_BY(mu_) = 0;
  bool activated_ ABSL_GUARDED_BY(mu_) = false;
  uint32_t device_features_sel_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t driver_features_sel_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t driver_features_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t queue_sel_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace sbx::vmm::virtio

#endif  // SBX_VMM_VIRTIO_MMIO_TRANSPORT_H_
