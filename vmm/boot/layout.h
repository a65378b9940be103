#ifndef SBX_VMM_BOOT_LAYOUT_H_
#define SBX_VMM_BOOT_LAYOUT_H_

#include "vmm/memory/guest_memory.h"

// Where the VMM puts boot structures in the guest's first MiB. Kernels load
// at or above 1 MiB (the loader refuses anything lower), so none of these
// can be overwritten by a kernel image.
namespace sbx::vmm::layout {

inline constexpr GuestAddress kGdt = 0x500;
inline constexpr GuestAddress kIdt = 0x520;
inline constexpr GuestAddress kPvhStartInfo = 0x6000;  // + memory map after it
inline constexpr GuestAddress kZeroPage = 0x7000;      // Linux boot_params
inline constexpr GuestAddress kBootStack = 0x8ff0;     // grows down
inline constexpr GuestAddress kPml4 = 0x9000;
inline constexpr GuestAddress kPdpt = 0xa000;
inline constexpr GuestAddress kPd = 0xb000;  // 4 pages: identity map of 4 GiB
inline constexpr GuestAddress kCmdline = 0x20000;
inline constexpr uint64_t kCmdlineMax = 2048;  // x86 COMMAND_LINE_SIZE
inline constexpr GuestAddress kMpTable = kEbdaStart;  // 0x9fc00, reserved
// Where a bzImage's protected-mode code is loaded (boot protocol "code32").
inline constexpr GuestAddress kBzImageLoad = kHighMemoryStart;

// The smallest guest RAM the boot path works with: the structures above
// plus room for a kernel.
inline constexpr uint64_t kMinRamBytes = 16 << 20;

}  // namespace sbx::vmm::layout

#endif  // SBX_VMM_BOOT_LAYOUT_H_
