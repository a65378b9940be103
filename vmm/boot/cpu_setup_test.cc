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

const kvm_cpuid_entry2* Find(const std::vector<kvm_cpuid_entry2>& c,
                             uint32_t function, uint32_t index = 0) {
  for (const kvm_cpuid_entry2& e : c) {
    if (e.function == function && e.index == index) return &e;
  }
  return nullptr;
}

TEST(CpuSetupTest, CpuidCarriesApicIdAndTopology) {
  std::vector<kvm_cpuid_entry2> supported(6);
  supported[0].function = 0x0;
  supported[0].eax = 0x10;  // the highest basic leaf
  supported[1].function = 0x1;
  supported[1].ebx = 0xffff1234;
  // What KVM reported on a PVM host with an AMD CPU: leaf 0xb subleaf 0
  // only, all zero.
  supported[2].function = 0xb;
  supported[3].function = 0x4;
  supported[3].eax = 0xfc000121;
  supported[4].function = 0x80000008;
  supported[4].ecx = 0x00047001;  // the host's: 2 cores, 7 id bits
  supported[5].function = 0x8000001e;
  supported[5].ebx = 0x00000107;
  supported[5].ecx = 0x00000103;
  std::vector<kvm_cpuid_entry2> c =
      GuestCpuid(supported, /*index=*/3, /*count=*/6, HostKvmTraits{});
  const kvm_cpuid_entry2* leaf1 = Find(c, 0x1);
  ASSERT_NE(leaf1, nullptr);
  EXPECT_EQ(leaf1->ebx >> 24, 3u);             // APIC id
  EXPECT_EQ((leaf1->ebx >> 16) & 0xff, 6u);    // logical CPUs
  EXPECT_EQ(leaf1->ebx & 0xffff, 0x1234u);     // the rest kept
  EXPECT_NE(leaf1->ecx & (1u << 31), 0u);      // hypervisor
  EXPECT_NE(leaf1->edx & (1u << 28), 0u);      // HTT
  const kvm_cpuid_entry2* leaf4 = Find(c, 0x4);
  ASSERT_NE(leaf4, nullptr);
  EXPECT_EQ(leaf4->eax >> 26, 5u);             // cores - 1
  EXPECT_EQ(leaf4->eax & 0x03ffffff, 0x121u);

  // Leaf 0xb made whole: SMT (1 thread), cores (6, 3 id bits), the end.
  const kvm_cpuid_entry2* smt = Find(c, 0xb, 0);
  const kvm_cpuid_entry2* core = Find(c, 0xb, 1);
  const kvm_cpuid_entry2* end = Find(c, 0xb, 2);
  ASSERT_NE(smt, nullptr);
  ASSERT_NE(core, nullptr);
  ASSERT_NE(end, nullptr);
  EXPECT_EQ(smt->eax, 0u);
  EXPECT_EQ(smt->ebx, 1u);
  EXPECT_EQ(smt->ecx, 1u << 8);
  EXPECT_EQ(core->eax, 3u);
  EXPECT_EQ(core->ebx, 6u);
  EXPECT_EQ(core->ecx, (2u << 8) | 1);
  EXPECT_EQ(end->ecx, 2u);                     // level type 0: invalid
  for (const kvm_cpuid_entry2* e : {smt, core, end}) {
    EXPECT_EQ(e->edx, 3u);                     // x2APIC id
    EXPECT_EQ(e->flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
  }
  EXPECT_EQ(Find(c, 0x1f), nullptr);           // not offered: not made up

  // AMD's view of the same package.
  const kvm_cpuid_entry2* amd = Find(c, 0x80000008);
  ASSERT_NE(amd, nullptr);
  EXPECT_EQ(amd->ecx & 0xff, 5u);              // cores - 1
  EXPECT_EQ((amd->ecx >> 12) & 0xf, 3u);       // APIC id bits for them
  EXPECT_EQ(amd->ecx & ~0xf0ffu, 0x40000u);      // the rest kept
  const kvm_cpuid_entry2* topo = Find(c, 0x8000001e);
  ASSERT_NE(topo, nullptr);
  EXPECT_EQ(topo->eax, 3u);                    // extended APIC id
  EXPECT_EQ(topo->ebx & 0xffff, 3u);           // core 3, one thread
  EXPECT_EQ(topo->ecx & 0x7ff, 0u);            // node 0 of 1
}

TEST(CpuSetupTest, ExtendedTopologyOnlyWhereTheCpuHasTheLeaves) {
  std::vector<kvm_cpuid_entry2> old_cpu(1);
  old_cpu[0].function = 0x0;
  old_cpu[0].eax = 0x7;  // no leaf 0xb
  EXPECT_EQ(Find(GuestCpuid(old_cpu, 0, 2, HostKvmTraits{}), 0xb), nullptr);

  std::vector<kvm_cpuid_entry2> new_cpu(3);
  new_cpu[0].function = 0x0;
  new_cpu[0].eax = 0x1f;
  new_cpu[1].function = 0x1f;
  new_cpu[1].index = 0;
  new_cpu[2].function = 0x1f;
  new_cpu[2].index = 5;  // a host level the guest does not have
  std::vector<kvm_cpuid_entry2> c = GuestCpuid(new_cpu, 1, 2, HostKvmTraits{});
  ASSERT_NE(Find(c, 0x1f, 1), nullptr);
  EXPECT_EQ(Find(c, 0x1f, 1)->ebx, 2u);
  EXPECT_EQ(Find(c, 0x1f, 1)->edx, 1u);
  EXPECT_EQ(Find(c, 0x1f, 5), nullptr);
  EXPECT_NE(Find(c, 0xb, 1), nullptr);
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

TEST(CpuSetupTest, AGuestThatMakesHypercallsIsRefusedWhereTheyDoNotReturn) {
  std::vector<kvm_cpuid_entry2> cpuid(1);
  cpuid[0].function = kKvmCpuidFeatures;
  cpuid[0].eax = 0x01007efb;  // what KVM offered on a PVM host
  EXPECT_EQ(GuestKvmFeatures(cpuid), 0x01007efbu);
  EXPECT_EQ(GuestKvmFeatures({}), 0u);

  const HostKvmTraits pvm = HostKvmTraitsFor(true);
  const HostKvmTraits hw = HostKvmTraitsFor(false);
  EXPECT_TRUE(CheckGuestKvmFeatures(0x01007efb, hw).ok());
  absl::Status refused = CheckGuestKvmFeatures(0x01007efb, pvm);
  EXPECT_TRUE(absl::IsFailedPrecondition(refused)) << refused;
  EXPECT_NE(refused.message().find("PVM"), std::string::npos) << refused;
  EXPECT_NE(refused.message().find("0x2880"), std::string::npos) << refused;
  // What the VMM shows a guest on PVM is fine there.
  EXPECT_TRUE(CheckGuestKvmFeatures(
                  GuestKvmFeatures(GuestCpuid(cpuid, 0, 2, pvm)), pvm).ok());
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
