#include "vmm/devices/bus.h"

#include <string>
#include <utility>

namespace sbx::vmm {

absl::Status Bus::Insert(uint64_t base, uint64_t size,
                         std::shared_ptr<BusDevice> device) {
  uint64_t end;
  if (size == 0 || __builtin_add_overflow(base, size, &end)) {
    return absl::InvalidArgumentError("bus range at " + std::to_string(base) +
                                      " is empty or wraps");
  }
  absl::MutexLock lock(&mu_);
  // The first range starting at or after `base`, and the one before it.
  auto next = ranges_.lower_bound(base);
  if (next != ranges_.end() && next->first < end) {
    return absl::AlreadyExistsError("bus range overlaps a device at " +
                                    std::to_string(next->first));
  }
  if (next != ranges_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second.size > base) {
      return absl::AlreadyExistsError("bus range overlaps a device at " +
                                      std::to_string(prev->first));
    }
  }
  ranges_.emplace(base, Range{size, std::move(device)});
  return absl::OkStatus();
}

std::shared_ptr<BusDevice> Bus::Find(uint64_t addr, uint64_t len,
                                     uint64_t* offset) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = ranges_.upper_bound(addr);
  if (it == ranges_.begin()) return nullptr;
  --it;
  uint64_t off = addr - it->first;
  // Checked without overflow: off < size and len <= size - off.
  if (off >= it->second.size || len > it->second.size - off) return nullptr;
  *offset = off;
  return it->second.device;
}

bool Bus::Read(uint64_t addr, std::span<uint8_t> data) const {
  uint64_t offset;
  std::shared_ptr<BusDevice> device = Find(addr, data.size(), &offset);
  if (device == nullptr) return false;
  device->Read(offset, data);
  return true;
}

bool Bus::Write(uint64_t addr, std::span<const uint8_t> data) const {
  uint64_t offset;
  std::shared_ptr<BusDevice> device = Find(addr, data.size(), &offset);
  if (device == nullptr) return false;
  device->Write(offset, data);
  return true;
}

}  // namespace sbx::vmm
