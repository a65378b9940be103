#ifndef SBX_VMM_DEVICES_SERIAL_H_
#define SBX_VMM_DEVICES_SERIAL_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <span>
#include <string_view>

#include "absl/synchronization/mutex.h"
#include "proto/vmstate.pb.h"
#include "vmm/devices/bus.h"

namespace sbx::vmm {

// A 16550A UART (the PC's COM1 at port 0x3f8, IRQ 4), enough for a Linux
// console: transmit, receive (bytes queued by the VMM), divisor latch,
// scratch register, loopback (the 8250 driver probes it), and the
// transmitter-empty and data-ready interrupts. The transmitter never
// stalls: every byte written goes to the output at once, so THR is always
// empty. Register reference: TI PC16550D datasheet, §8.
class Serial : public BusDevice {
 public:
  static constexpr uint64_t kCom1Port = 0x3f8;
  static constexpr uint64_t kPortCount = 8;
  static constexpr uint32_t kCom1Irq = 4;

  // `output` receives what the guest transmits; `interrupt` raises the
  // UART's interrupt line (an irqfd in the VMM). Both are called with the
  // device lock held and must not call back into the device.
  Serial(std::function<void(std::span<const uint8_t>)> output,
         std::function<void()> interrupt);

  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

  // Queues bytes for the guest to receive (host console input).
  void Receive(std::span<const uint8_t> bytes);

  // Snapshots: the register file and the bytes the guest has not read.
  // Restore fails (kInvalidArgument) on values no guest could have set,
  // and changes nothing then.
  sbx::vmstate::v1::SerialState SaveState() const;
  absl::Status RestoreState(const sbx::vmstate::v1::SerialState& state);

 private:
  uint8_t ReadRegister(uint64_t offset) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WriteRegister(uint64_t offset, uint8_t value)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The interrupt identification the guest would read now.
  uint8_t PendingInterrupt() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateInterrupt() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool dlab() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return lcr_ & 0x80; }
  bool loopback() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return mcr_ & 0x10; }

  std::function<void(std::span<const uint8_t>)> output_;
  std::function<void()> interrupt_;

  mutable absl::Mutex mu_;
  uint8_t ier_ ABSL_GUARDED_BY(mu_) = 0;
  uint8_t lcr_ ABSL_GUARDED_BY(mu_) = 0x03;  // 8N1
  uint8_t mcr_ ABSL_GUARDED_BY(mu_) = 0x08;  // OUT2
  uint8_t scr_ ABSL_GUARDED_BY(mu_) = 0;
  uint8_t dll_ ABSL_GUARDED_BY(mu_) = 0x0c;  // 9600 baud
  uint8_t dlm_ ABSL_GUARDED_BY(mu_) = 0;
  bool fifo_enabled_ ABSL_GUARDED_BY(mu_) = false;
  // THR-empty interrupt pending: set when THR empties (always right after a
  // write) or THRE interrupts are enabled; cleared by reading IIR while it
  // is the reported cause, or by writing THR.
  bool thre_pending_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<uint8_t> rx_ ABSL_GUARDED_BY(mu_);
  // Bound on queued input a guest has not read.
  static constexpr size_t kRxLimit = 64 * 1024;
};

}  // namespace sbx::vmm

#endif  // SBX_VMM_DEVICES_SERIAL_H_
