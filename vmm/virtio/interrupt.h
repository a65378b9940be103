#ifndef SBX_VMM_VIRTIO_INTERRUPT_H_
#define SBX_VMM_VIRTIO_INTERRUPT_H_

#include <atomic>
#include <cstdint>
#include <utility>

#include "base/event_fd.h"

namespace sbx::vmm::virtio {

// The device-to-driver notification of one virtio-mmio device: the
// InterruptStatus bits (virtio 1.2 §4.2.2) and the eventfd that raises the
// guest interrupt (a KVM irqfd in the VMM; tests read it with Consume()).
//
// Thread-safe and lock-free: a device raises interrupts while its transport
// holds its own lock, and vCPU threads read and acknowledge the status.
class Interrupt {
 public:
  // InterruptStatus bits (§4.2.2).
  static constexpr uint32_t kUsedBuffer = 1u << 0;
  static constexpr uint32_t kConfigChange = 1u << 1;

  explicit Interrupt(EventFd irq) : irq_(std::move(irq)) {}
  Interrupt(const Interrupt&) = delete;
  Interrupt& operator=(const Interrupt&) = delete;

  // Sets `reasons` in InterruptStatus and signals the eventfd (every time:
  // a spurious guest interrupt costs little, a lost one hangs a queue).
  void Raise(uint32_t reasons);

  // The device changed its configuration space: bumps ConfigGeneration
  // (§2.5.1, §4.2.2) and raises kConfigChange.
  void NotifyConfigChange();

  uint32_t status() const { return status_.load(); }
  // InterruptACK: clears the bits set in `reasons`.
  void Acknowledge(uint32_t reasons) { status_.fetch_and(~reasons); }
  // Device reset clears InterruptStatus (§4.2.2.1).
  void Clear() { status_.store(0); }

  uint32_t config_generation() const { return config_generation_.load(); }

  // Snapshot restore: sets both values without signalling the eventfd
  // (an interrupt the guest had not taken yet is in the restored irqchip).
  void RestoreState(uint32_t status, uint32_t config_generation) {
    status_.store(status);
    config_generation_.store(config_generation);
  }

  const EventFd& irq() const { return irq_; }

 private:
  const EventFd irq_;
  std::atomic<uint32_t> status_{0};
  std::atomic<uint32_t> config_generation_{0};
};

}  // namespace sbx::vmm::virtio

#endif  // SBX_VMM_VIRTIO_INTERRUPT_H_
