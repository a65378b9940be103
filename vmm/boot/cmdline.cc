#include "vmm/boot/cmdline.h"

#include <cstdio>

namespace sbx::vmm {

absl::Status KernelCmdline::Append(std::string_view params) {
  for (char c : params) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      return absl::InvalidArgumentError(
          "kernel command line: control character " + std::to_string(u) +
          " is not allowed");
    }
  }
  // Trim what the user may have put around the parameters.
  while (!params.empty() && params.front() == ' ') params.remove_prefix(1);
  while (!params.empty() && params.back() == ' ') params.remove_suffix(1);
  if (params.empty()) return absl::OkStatus();
  uint64_t new_size = line_.size() + (line_.empty() ? 0 : 1) + params.size();
  if (new_size + 1 > capacity_) {
    return absl::InvalidArgumentError(
        "kernel command line too long: " + std::to_string(new_size) +
        " bytes, the limit is " + std::to_string(capacity_ - 1));
  }
  if (!line_.empty()) line_ += ' ';
  line_ += params;
  return absl::OkStatus();
}

absl::Status KernelCmdline::AddVirtioMmioDevice(uint64_t size, GuestAddress addr,
                                                uint32_t irq) {
  char buf[96];
  if (size % 1024 == 0) {
    std::snprintf(buf, sizeof(buf), "virtio_mmio.device=%lluK@0x%llx:%u",
                  static_cast<unsigned long long>(size / 1024),
                  static_cast<unsigned long long>(addr), irq);
  } else {
    std::snprintf(buf, sizeof(buf), "virtio_mmio.device=%llu@0x%llx:%u",
                  static_cast<unsigned long long>(size),
                  static_cast<unsigned long long>(addr), irq);
  }
  return Append(buf);
}

}  // namespace sbx::vmm
