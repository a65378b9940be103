#ifndef SBX_VMM_DEVICES_I8042_H_
#define SBX_VMM_DEVICES_I8042_H_

#include <cstdint>
#include <deque>
#include <functional>

#include "absl/synchronization/mutex.h"
#include "proto/vmstate.pb.h"
#include "vmm/devices/bus.h"

namespace sbx::vmm {

// Just enough of the PC keyboard controller for a guest to reboot: with
// `reboot=k` Linux writes 0xfe ("pulse reset line") to port 0x64, which is
// how a guest without ACPI ends its VM. Answers the probe and self-test the
// Linux i8042 driver performs; has no keyboard or mouse behind it.
// Ports 0x60 (data) and 0x64 (status/command): offsets 0 and 4.
class I8042 : public BusDevice {
 public:
  static constexpr uint64_t kPortBase = 0x60;
  static constexpr uint64_t kPortCount = 5;

  // `reset` is called (once per request) when the guest asks for a reset.
  explicit I8042(std::function<void()> reset);

  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

  // Snapshots. Restore fails (kInvalidArgument) on values out of range.
  sbx::vmstate::v1::I8042State SaveState() const;
  absl::Status RestoreState(const sbx::vmstate::v1::I8042State& state);

 private:
  static constexpr size_t kMaxOutput = 16;

  std::function<void()> reset_;
  mutable absl::Mutex mu_;
  uint8_t command_byte_ ABSL_GUARDED_BY(mu_) = 0x45;  // translate, sys, kbd int
  // A command that waits for its data byte on port 0x60 (0 if none).
  uint8_t pending_command_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<uint8_t> output_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sbx::vmm

#endif  // SBX_VMM_DEVICES_I8042_H_
