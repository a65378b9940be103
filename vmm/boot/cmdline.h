#ifndef SBX_VMM_BOOT_CMDLINE_H_
#define SBX_VMM_BOOT_CMDLINE_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "vmm/memory/guest_memory.h"

namespace sbx::vmm {

// The guest kernel's command line, built from the user's parameters and the
// devices the VMM adds (virtio-mmio devices are announced here, so the guest
// kernel needs CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES).
class KernelCmdline {
 public:
  explicit KernelCmdline(uint64_t capacity) : capacity_(capacity) {}

  // Appends space-separated parameters. Refuses NUL, control characters and
  // a result that would not fit (capacity includes the terminating NUL).
  absl::Status Append(std::string_view params);

  // "virtio_mmio.device=<size>@<addr>:<irq>" (kernel-parameters.txt,
  // drivers/virtio/virtio_mmio.c).
  absl::Status AddVirtioMmioDevice(uint64_t size, GuestAddress addr,
                                   uint32_t irq);

  const std::string& str() const { return line_; }

 private:
  uint64_t capacity_;
  std::string line_;
};

}  // namespace sbx::vmm

#endif  // SBX_VMM_BOOT_CMDLINE_H_
