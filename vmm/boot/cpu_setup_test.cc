#include "vmm/boot/cpu_setup.h"

#include "gtest/gtest.h"
#include "vmm/boot/layout.h"
#include "vmm/boot/x86_boot.h"

namespace sbx::vmm {
namespace {

TEST(CpuSetupTest, PvhEntersFlat32BitProtectedModeWithoutPaging) {
  kvm_sregs reset = {};
  reset.apic_base = 0xfee00900;
  kvm_sregs s = BootSregs(BootProtocol::kPvh, reset);
  EXPECT_EQ(s.cr0 & 1, 1u);              // PE
  EXPECT_EQ(s.cr0 & (1ull << 31), 0u);   // no paging
  EXPECT_EQ(s.efer, 0u);
  EXPECT_EQ(s.cs.l, 0);
  EXPECT_EQ(s.cs.db, 1);
  EXPECT_EQ(s.cs.selector, kCode32Selector);
  EXPECT_EQ(s.cs.limit, 0xffffffffu);
  EXPECT_EQ(s.ds.type, 3);
  EXPECT_EQ(s.tr.type, 11);
  EXPECT_EQ(s.apic_base, 0xfee00900u);  // kept from KVM's reset state

  LoadedKernel k{BootProtocol::kPvh, 0x1000000, 0x2000000, {}};
  kvm_regs r = BootRegs(k);
  EXPECT_EQ(r.rip, 0x1000000u);
  EXPECT_EQ(r.rbx, layout::kPvhStartInfo);
  EXPECT_EQ(r.rflags, 2u);
}

TEST(CpuSetupTest, Linux64EntersLongModeOnTheIdentityMap) {
  kvm_sregs s = BootSregs(BootProtocol::kLinux64, kvm_sregs{});
  EXPECT_NE(s.cr0 & (1ull << 31), 0u);  // paging
  EXPECT_NE(s.cr4 & (1ull << 5), 0u);   // PAE
  EXPECT_EQ(s.cr3, layout::kPml4);
  EXPECT_EQ(s.efer & 0x500, 0x500u);    // LME | LMA
  EXPECT_EQ(s.cs.l, 1);
  EXPECT_EQ(s.cs.db, 0);
  EXPECT_EQ(s.gdt.base, layout::kGdt);

  LoadedKernel k{BootProtocol::kLinux64, 0x1000000, 0x2000000, {}};
  EXPECT_EQ(BootRegs(k).rsi, layout::kZeroPage);
}

TEST(CpuSetupTest, CpuidCarriesApicIdAndTopology) {
  std::vector<kvm_cpuid_entry2> supported(3);
  supported[0].function = 0x1;
  supported[0].ebx = 0xffff1234;
  supported[1].function = 0xb;
  supported[1].index = 1;
  supported[2].function = 0x4;
  supported[2].eax = 0xfc000121;
  std::vector<kvm_cpuid_entry2> c = GuestCpuid(supported, /*index=*/3, /*count=*/6, HostKvmTraits{});
  EXPECT_EQ(c[0].ebx >> 24, 3u);               // APIC id
  EXPECT_EQ((c[0].ebx >> 16) & 0xff, 6u);      // logical CPUs
  EXPECT_EQ(c[0].ebx & 0xffff, 0x1234u);       // the rest kept
  EXPECT_NE(c[0].ecx & (1u << 31), 0u);        // hypervisor
  EXPECT_NE(c[0].edx & (1u << 28), 0u);        // HTT
  EXPECT_EQ(c[1].edx, 3u);                     // x2APIC id
  EXPECT_EQ(c[1].eax, 3u);                     // 6 cores need 3 bits
  EXPECT_EQ(c[1].ebx, 6u);
  EXPECT_EQ(c[2].eax >> 26, 5u);               // cores - 1
  EXPECT_EQ(c[2].eax & 0x03ffffff, 0x121u);
}

TEST(CpuSetupTest, HypercallFeaturesAreHiddenOnlyWhereHypercallsDoNotWork) {
  std::vector<kvm_cpuid_entry2> supported(2);
  supported[0].function = 0x40000000;  // KVM's signature leaf: untouched
  supported[0].eax = 0x40000001;
  supported[1].function = kKvmCpuidFeatures;
  // CLOCKSOURCE, CLOCKSOURCE2, ASYNC_PF, STEAL_TIME, PV_EOI, PV_UNHALT,
  // PV_TLB_FLUSH, PV_SEND_IPI, POLL_CONTROL, PV_SCHED_YIELD,
  // HC_MAP_GPA_RANGE, and the stable-clock bit.
  const uint32_t all = 0x010132f9;
  supported[1].eax = all;
  supported[1].edx = 1;  // KVM_HINTS_REALTIME: a hint, kept

  std::vector<kvm_cpuid_entry2> hw =
      GuestCpuid(supported, 0, 2, HostKvmTraitsFor(/*pvm=*/false));
  EXPECT_EQ(hw[1].eax, all);

  std::vector<kvm_cpuid_entry2> pvm =
      GuestCpuid(supported, 0, 2, HostKvmTraitsFor(/*pvm=*/true));
  EXPECT_EQ(pvm[0].eax, 0x40000001u);
  EXPECT_EQ(pvm[1].eax & kKvmFeaturePvSendIpi, 0u);
  EXPECT_EQ(pvm[1].eax & kKvmFeaturePvUnhalt, 0u);
  EXPECT_EQ(pvm[1].eax & kKvmFeaturePvSchedYield, 0u);
  EXPECT_EQ(pvm[1].eax & kKvmFeatureHcMapGpaRange, 0u);
  // What works through MSRs and shared memory stays.
  EXPECT_EQ(pvm[1].eax, all & ~kKvmHypercallFeatures);
  EXPECT_NE(pvm[1].eax & (1u << 9), 0u);  // PV_TLB_FLUSH
  EXPECT_NE(pvm[1].eax & (1u << 5), 0u);  // STEAL_TIME
  EXPECT_EQ(pvm[1].edx, 1u);
}

TEST(CpuSetupTest, BootMsrsAndFpu) {
  std::vector<kvm_msr_entry> msrs = BootMsrs();
  bool has_mtrr = false;
  for (const kvm_msr_entry& m : msrs) {
    if (m.index == 0x2ff) has_mtrr = m.data == ((1u << 11) | 6);
  }
  EXPECT_TRUE(has_mtrr);
  EXPECT_EQ(BootFpu().fcw, 0x37f);
  EXPECT_EQ(BootFpu().mxcsr, 0x1f80u);
}

}  // namespace
}  // namespace sbx::vmm
