// The KVM ioctl numbers and layouts sbx uses must be the kernel's (C's),
// whatever the C++ view of <linux/kvm.h> is. Runs without KVM.
#include "vmm/kvm/kvm_abi.h"

#include "gtest/gtest.h"

extern "C" {
extern const unsigned long sbx_c_kvm_get_supported_cpuid;
extern const unsigned long sbx_c_kvm_set_cpuid2;
extern const unsigned long sbx_c_kvm_get_cpuid2;
extern const unsigned long sbx_c_kvm_get_msr_index_list;
extern const unsigned long sbx_c_kvm_get_msrs;
extern const unsigned long sbx_c_kvm_set_msrs;
extern const unsigned long sbx_c_cpuid2_entries_offset;
extern const unsigned long sbx_c_msrs_entries_offset;
extern const unsigned long sbx_c_msr_list_indices_offset;
extern const unsigned long sbx_c_kvm_get_xsave;
extern const unsigned long sbx_c_kvm_set_xsave;
extern const unsigned long sbx_c_xsave_size;
}

namespace sbx::vmm::abi {
namespace {

TEST(KvmAbiTest, IoctlNumbersMatchTheKernelsCLayout) {
  EXPECT_EQ(kGetSupportedCpuid, sbx_c_kvm_get_supported_cpuid);
  EXPECT_EQ(kSetCpuid2, sbx_c_kvm_set_cpuid2);
  EXPECT_EQ(kGetCpuid2, sbx_c_kvm_get_cpuid2);
  EXPECT_EQ(kGetMsrIndexList, sbx_c_kvm_get_msr_index_list);
  EXPECT_EQ(kGetMsrs, sbx_c_kvm_get_msrs);
  EXPECT_EQ(kSetMsrs, sbx_c_kvm_set_msrs);
  EXPECT_EQ(kGetXsave, sbx_c_kvm_get_xsave);
  EXPECT_EQ(kSetXsave, sbx_c_kvm_set_xsave);
  EXPECT_EQ(sizeof(Xsave), sbx_c_xsave_size);
}

TEST(KvmAbiTest, EntriesFollowTheHeaders) {
  EXPECT_EQ(sizeof(Cpuid2Header), sbx_c_cpuid2_entries_offset);
  EXPECT_EQ(sizeof(MsrsHeader), sbx_c_msrs_entries_offset);
  EXPECT_EQ(sizeof(MsrListHeader), sbx_c_msr_list_indices_offset);
}

}  // namespace
}  // namespace sbx::vmm::abi
