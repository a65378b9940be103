#ifndef SBX_VMM_BOOT_KERNEL_LOADER_H_
#define SBX_VMM_BOOT_KERNEL_LOADER_H_

#include <asm/bootparam.h>

#include <cstdint>
#include <optional>
#include <span>

#include "absl/status/statusor.h"
#include "vmm/memory/guest_memory.h"

namespace sbx::vmm {

// How the vCPU enters the kernel.
enum class BootProtocol {
  // PVH (Xen's x86 HVM direct boot ABI, used by Firecracker and QEMU): a
  // 32-bit protected-mode entry named by an ELF note, paging off, EBX =
  // address of an hvm_start_info.
  kPvh,
  // The Linux x86 64-bit boot protocol (Documentation/arch/x86/boot.rst
  // "64-bit Boot Protocol"): long mode, identity-mapped page tables,
  // RSI = address of boot_params (the zero page).
  kLinux64,
};

struct LoadedKernel {
  BootProtocol protocol;
  GuestAddress entry;  // where the vCPU starts, for `protocol`
  GuestAddress end;    // first guest address after the loaded image
  // A bzImage's setup header, copied into boot_params; absent for an ELF.
  std::optional<setup_header> setup;
};

enum class BootPreference { kAuto, kPvh, kLinux64 };

// Loads a kernel image into guest RAM: an uncompressed ELF vmlinux (PVH entry
// if it has one and `preference` allows, else the 64-bit entry) or a
// bzImage (64-bit entry; needs boot protocol 2.12+). The image is untrusted
// input: every header field, offset and size is checked, and segments must
// load at or above 1 MiB, inside guest RAM. Errors say what is wrong with
// the file ("not an x86-64 kernel: ...").
absl::StatusOr<LoadedKernel> LoadKernel(GuestMemory& memory,
                                        std::span<const uint8_t> image,
                                        BootPreference preference =
                                            BootPreference::kAuto);

}  // namespace sbx::vmm

#endif  // SBX_VMM_BOOT_KERNEL_LOADER_H_
