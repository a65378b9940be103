#ifndef SBX_VMM_DEVICES_BUS_H_
#define SBX_VMM_DEVICES_BUS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <span>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace sbx::vmm {

// A device on an address space (port I/O or MMIO). It sees offsets from the
// start of its own range, never absolute addresses, and never fails: what a
// guest does with an unknown offset or size is the device's to ignore (reads
// then return zeros or all-ones as the hardware would) and to log
// rate-limited. Read/Write may be called from several vCPU threads at once;
// a device synchronizes its own state.
class BusDevice {
 public:
  virtual ~BusDevice() = default;
  // `data` is 1, 2, 4 or 8 bytes wide (what the guest's access was).
  virtual void Read(uint64_t offset, std::span<uint8_t> data) = 0;
  virtual void Write(uint64_t offset, std::span<const uint8_t> data) = 0;
};

// Routes guest accesses to the device whose range holds them. Ranges never
// overlap. Thread-safe; lookups take a reader lock.
class Bus {
 public:
  // Adds `device` at [base, base + size). Fails if the range is empty,
  // wraps, or overlaps another device's.
  absl::Status Insert(uint64_t base, uint64_t size,
                      std::shared_ptr<BusDevice> device);

  // Dispatches an access; returns false (and does nothing) if no device
  // holds all of [addr, addr + data.size()). For a read that no device
  // takes, the caller decides what the guest sees.
  bool Read(uint64_t addr, std::span<uint8_t> data) const;
  bool Write(uint64_t addr, std::span<const uint8_t> data) const;

 private:
  struct Range {
    uint64_t size;
    std::shared_ptr<BusDevice> device;
  };
  // The device and offset for [addr, addr + len), or nullptr.
  std::shared_ptr<BusDevice> Find(uint64_t addr, uint64_t len,
                                  uint64_t* offset) const;

  mutable absl::Mutex mu_;
  std::map<uint64_t, Range> ranges_ ABSL_GUARDED_BY(mu_);  // by base
};

}  // namespace sbx::vmm

#endif  // SBX_VMM_DEVICES_BUS_H_
