#ifndef SBX_VMM_KVM_KVM_ABI_H_
#define SBX_VMM_KVM_KVM_ABI_H_

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cstdint>

// KVM structures that end in a flexible array, laid out as the kernel (C)
// sees them.
//
// Debian 12's linux-libc-dev (6.1) declares those arrays with
// __DECLARE_FLEX_ARRAY, which wraps an empty struct; an empty struct has
// size 0 in C but 1 in C++, so in C++ `struct kvm_cpuid2` is 12 bytes, not
// 8. That moves the entries and changes the size encoded in the ioctl
// number, and KVM answers EINVAL. (Fixed in later kernel headers.) sbx uses
// these headers and ioctl numbers instead; kvm_abi_test compares them with
// what a C compiler makes of <linux/kvm.h>.
namespace sbx::vmm::abi {

struct Cpuid2Header {  // struct kvm_cpuid2 without its entries
  uint32_t nent;
  uint32_t padding;
};
struct MsrsHeader {  // struct kvm_msrs
  uint32_t nmsrs;
  uint32_t pad;
};
struct MsrListHeader {  // struct kvm_msr_list
  uint32_t nmsrs;
};
// struct kvm_xsave without its `extra` flexible array: the 4 KiB area
// KVM_GET_XSAVE fills and KVM_SET_XSAVE takes. (KVM_GET_XSAVE2 is needed
// only for dynamically enabled XSAVE features, which sbx never enables.)
struct Xsave {
  uint32_t region[1024];
};
static_assert(sizeof(Cpuid2Header) == 8 && sizeof(MsrsHeader) == 8 &&
              sizeof(MsrListHeader) == 4 && sizeof(Xsave) == 4096);

inline constexpr unsigned long kGetSupportedCpuid =
    _IOWR(KVMIO, 0x05, Cpuid2Header);
inline constexpr unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, Cpuid2Header);
inline constexpr unsigned long kGetCpuid2 = _IOWR(KVMIO, 0x91, Cpuid2Header);
inline constexpr unsigned long kGetMsrIndexList =
    _IOWR(KVMIO, 0x02, MsrListHeader);
inline constexpr unsigned long kGetMsrs = _IOWR(KVMIO, 0x88, MsrsHeader);
inline constexpr unsigned long kSetMsrs = _IOW(KVMIO, 0x89, MsrsHeader);
inline constexpr unsigned long kGetXsave = _IOR(KVMIO, 0xa4, Xsave);
inline constexpr unsigned long kSetXsave = _IOW(KVMIO, 0xa5, Xsave);

}  // namespace sbx::vmm::abi

#endif  // SBX_VMM_KVM_KVM_ABI_H_
