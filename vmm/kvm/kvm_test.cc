// Needs a working /dev/kvm (label kvm).
#include "vmm/kvm/kvm.h"

#include <sys/mman.h>

#include "base/test_facility.h"
#include "gtest/gtest.h"

namespace sbx::vmm {
namespace {

TEST(KvmTest, OpensAndReportsCpuidAndMsrs) {
  SBX_REQUIRE(testing::CheckKvm());
  absl::StatusOr<std::unique_ptr<Kvm>> kvm = Kvm::Open();
  ASSERT_TRUE(kvm.ok()) << kvm.status();
  absl::StatusOr<std::vector<kvm_cpuid_entry2>> cpuid =
      (*kvm)->SupportedCpuid();
  ASSERT_TRUE(cpuid.ok()) << cpuid.status();
  // Leaf 0 (vendor and max leaf) is always there.
  bool has_leaf0 = false;
  for (const kvm_cpuid_entry2& e : *cpuid) has_leaf0 |= e.function == 0;
  EXPECT_TRUE(has_leaf0);
  absl::StatusOr<std::vector<uint32_t>> msrs = (*kvm)->MsrIndexList();
  ASSERT_TRUE(msrs.ok()) << msrs.status();
  EXPECT_FALSE(msrs->empty());
}

TEST(KvmTest, CreatesVmWithIrqchipMemoryAndVcpus) {
  SBX_REQUIRE(testing::CheckKvm());
  auto kvm = Kvm::Open();
  ASSERT_TRUE(kvm.ok()) << kvm.status();
  auto vm = Vm::Create(**kvm);
  ASSERT_TRUE(vm.ok()) << vm.status();
  ASSERT_TRUE((*vm)->CreateIrqchipAndPit().ok());
  void* ram = ::mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(ram, MAP_FAILED);
  EXPECT_TRUE((*vm)->SetMemoryRegion(0, 0, 1 << 20, ram).ok());
  auto vcpu0 = (*vm)->CreateVcpu(0);
  ASSERT_TRUE(vcpu0.ok()) << vcpu0.status();
  auto vcpu1 = (*vm)->CreateVcpu(1);
  ASSERT_TRUE(vcpu1.ok()) << vcpu1.status();
  // The same id twice is refused.
  EXPECT_FALSE((*vm)->CreateVcpu(1).ok());
  auto regs = (*vcpu0)->GetRegs();
  ASSERT_TRUE(regs.ok());
  // x86 reset state: RIP 0xfff0.
  EXPECT_EQ(regs->rip, 0xfff0u);
  vcpu1->reset();
  vcpu0->reset();
  ::munmap(ram, 1 << 20);
}

}  // namespace
}  // namespace sbx::vmm
