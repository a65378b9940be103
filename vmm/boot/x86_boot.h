#ifndef SBX_VMM_BOOT_X86_BOOT_H_
#define SBX_VMM_BOOT_X86_BOOT_H_

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "vmm/boot/kernel_loader.h"
#include "vmm/memory/guest_memory.h"

namespace sbx::vmm {

// PVH start of day (xen/include/public/arch-x86/hvm/start_info.h), version 1.
struct HvmStartInfo {
  static constexpr uint32_t kMagic = 0x336ec578;
  uint32_t magic;
  uint32_t version;
  uint32_t flags;
  uint32_t nr_modules;
  uint64_t modlist_paddr;
  uint64_t cmdline_paddr;
  uint64_t rsdp_paddr;
  uint64_t memmap_paddr;
  uint32_t memmap_entries;
  uint32_t reserved;
};
static_assert(sizeof(HvmStartInfo) == 56);

struct HvmMemmapEntry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;  // E820 types
  uint32_t reserved;
};
static_assert(sizeof(HvmMemmapEntry) == 24);

// Writes what the guest needs at entry into guest RAM: the command line, the
// GDT, the MP table describing `num_cpus` CPUs and the IOAPIC, and either
// PVH's start_info + memory map or Linux's boot_params (zero page) + e820
// and identity page tables for long mode, per `kernel.protocol`.
absl::Status WriteBootData(GuestMemory& memory, const LoadedKernel& kernel,
                           std::string_view cmdline, int num_cpus);

// The pieces, exposed for tests.
absl::Status WriteGdt(GuestMemory& memory);
absl::Status WriteIdentityPageTables(GuestMemory& memory);
absl::Status WriteMpTable(GuestMemory& memory, int num_cpus);

// GDT selectors WriteGdt sets up (and the vCPU setup loads).
inline constexpr uint16_t kCode64Selector = 0x08;
inline constexpr uint16_t kDataSelector = 0x10;
inline constexpr uint16_t kTssSelector = 0x18;
inline constexpr uint16_t kCode32Selector = 0x20;

// The IOAPIC's MP table id and the pins legacy ISA IRQs map to.
inline constexpr int kIoapicPins = 24;
inline constexpr uint64_t kIoapicAddress = 0xfec0'0000;
inline constexpr uint64_t kLapicAddress = 0xfee0'0000;

}  // namespace sbx::vmm

#endif  // SBX_VMM_BOOT_X86_BOOT_H_
