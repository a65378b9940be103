#include "vmm/boot/cpu_setup.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "vmm/boot/layout.h"
#include "vmm/boot/x86_boot.h"

namespace sbx::vmm {
namespace {

// Control register and EFER bits (Intel SDM vol. 3 §2.5, §2.2.1).
constexpr uint64_t kCr0Pe = 1ull << 0;
constexpr uint64_t kCr0Et = 1ull << 4;
constexpr uint64_t kCr0Pg = 1ull << 31;
constexpr uint64_t kCr4Pae = 1ull << 5;
constexpr uint64_t kEferLme = 1ull << 8;
constexpr uint64_t kEferLma = 1ull << 10;

// MSR numbers (Intel SDM vol. 4).
constexpr uint32_t kMsrSysenterCs = 0x174;
constexpr uint32_t kMsrSysenterEsp = 0x175;
constexpr uint32_t kMsrSysenterEip = 0x176;
constexpr uint32_t kMsrStar = 0xc0000081;
constexpr uint32_t kMsrLstar = 0xc0000082;
constexpr uint32_t kMsrCstar = 0xc0000083;
constexpr uint32_t kMsrSyscallMask = 0xc0000084;
constexpr uint32_t kMsrKernelGsBase = 0xc0000102;
constexpr uint32_t kMsrTsc = 0x10;
constexpr uint32_t kMsrMiscEnable = 0x1a0;
constexpr uint32_t kMsrMtrrDefType = 0x2ff;

// LAPIC register offsets and delivery modes (Intel SDM vol. 3 §11.5.1).
constexpr size_t kApicLvtLint0 = 0x350;
constexpr size_t kApicLvtLint1 = 0x360;
constexpr uint32_t kApicModeExtInt = 0x7;
constexpr uint32_t kApicModeNmi = 0x4;

kvm_segment FlatSegment(uint16_t selector, uint8_t type, bool code64,
                        bool big) {
  kvm_segment s = {};
  s.base = 0;
  s.limit = 0xffffffff;
  s.selector = selector;
  s.type = type;
  s.present = 1;
  s.dpl = 0;
  s.db = big ? 1 : 0;
  s.s = 1;
  s.l = code64 ? 1 : 0;
  s.g = 1;
  return s;
}

uint32_t GetApicReg(const kvm_lapic_state& lapic, size_t offset) {
  uint32_t v;
  std::memcpy(&v, lapic.regs + offset, sizeof(v));
  return v;
}

void SetApicReg(kvm_lapic_state& lapic, size_t offset, uint32_t v) {
  std::memcpy(lapic.regs + offset, &v, sizeof(v));
}

uint32_t SetDeliveryMode(uint32_t lvt, uint32_t mode) {
  return (lvt & ~0x700u) | (mode << 8);
}

int BitsFor(int count) {
  int bits = 0;
  while ((1 << bits) < count) ++bits;
  return bits;
}

}  // namespace

kvm_sregs BootSregs(BootProtocol protocol, const kvm_sregs& reset) {
  kvm_sregs sregs = reset;
  sregs.gdt.base = layout::kGdt;
  sregs.gdt.limit = 5 * 8 - 1;
  sregs.idt.base = layout::kIdt;
  sregs.idt.limit = 7;

  kvm_segment data = FlatSegment(kDataSelector, 0x3, false, true);
  kvm_segment tss = FlatSegment(kTssSelector, 0xb, false, false);
  tss.s = 0;  // system segment
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
  sregs.tr = tss;

  switch (protocol) {
    case BootProtocol::kPvh:
      // PVH ABI: CR0.PE set, paging off, CR4 zero, flat 32-bit segments.
      sregs.cs = FlatSegment(kCode32Selector, 0xb, false, true);
      sregs.cr0 = kCr0Pe | kCr0Et;
      sregs.cr4 = 0;
      sregs.efer = 0;
      break;
    case BootProtocol::kLinux64:
      sregs.cs = FlatSegment(kCode64Selector, 0xb, true, false);
      sregs.cr0 = kCr0Pe | kCr0Et | kCr0Pg;
      sregs.cr3 = layout::kPml4;
      sregs.cr4 = kCr4Pae;
      sregs.efer = kEferLme | kEferLma;
      break;
  }
  return sregs;
}

kvm_regs BootRegs(const LoadedKernel& kernel) {
  kvm_regs regs = {};
  regs.rflags = 0x2;  // bit 1 is reserved, always 1
  regs.rip = kernel.entry;
  regs.rsp = layout::kBootStack;
  regs.rbp = layout::kBootStack;
  switch (kernel.protocol) {
    case BootProtocol::kPvh:
      regs.rbx = layout::kPvhStartInfo;
      break;
    case BootProtocol::kLinux64:
      regs.rsi = layout::kZeroPage;
      break;
  }
  return regs;
}

std::vector<kvm_msr_entry> BootMsrs() {
  auto msr = [](uint32_t index, uint64_t data) {
    kvm_msr_entry e = {};
    e.index = index;
    e.data = data;
    return e;
  };
  return {
      msr(kMsrSysenterCs, 0),   msr(kMsrSysenterEsp, 0),
      msr(kMsrSysenterEip, 0),  msr(kMsrStar, 0),
      msr(kMsrCstar, 0),        msr(kMsrKernelGsBase, 0),
      msr(kMsrSyscallMask, 0),  msr(kMsrLstar, 0),
      msr(kMsrTsc, 0),
      msr(kMsrMiscEnable, 1),  // fast string operations
      msr(kMsrMtrrDefType, (1u << 11) | 6),  // MTRRs on, default WB
  };
}

kvm_fpu BootFpu() {
  kvm_fpu fpu = {};
  fpu.fcw = 0x37f;
  fpu.mxcsr = 0x1f80;
  return fpu;
}

namespace {

// CPUID leaf 0xb (and 0x1f, its successor) for `apic_id` of `count`
// (Intel SDM vol. 2A, CPUID, "V2 Extended Topology Enumeration"): level 0
// SMT with one thread, level 1 cores, then the invalid level that ends the
// list. KVM reports only what the host's CPU has for these leaves (on some
// hosts subleaf 0 alone): without level 1 a Linux guest derives the
// package from the whole APIC id, puts every vCPU in a package of its own
// and leaves them out of each other's core siblings.
void AppendExtendedTopology(std::vector<kvm_cpuid_entry2>& entries,
                            uint32_t function, uint32_t apic_id, int count) {
  for (uint32_t index = 0; index < 3; ++index) {
    kvm_cpuid_entry2 e = {};
    e.function = function;
    e.index = index;
    e.flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
    e.edx = apic_id;
    switch (index) {
      case 0:  // SMT: one thread per core, so no bits to shift
        e.eax = 0;
        e.ebx = 1;
        e.ecx = (1u << 8) | index;
        break;
      case 1:  // cores: all of them in one package
        e.eax = static_cast<uint32_t>(BitsFor(count));
        e.ebx = static_cast<uint32_t>(count);
        e.ecx = (2u << 8) | index;
        break;
      default:  // the end of the list
        e.ecx = index;
        break;
    }
    entries.push_back(e);
  }
}

}  // namespace

HostKvmTraits HostKvmTraitsFor(bool pvm) {
  HostKvmTraits traits;
  traits.hypercalls_work = !pvm;
  return traits;
}

std::vector<kvm_cpuid_entry2> GuestCpuid(
    std::vector<kvm_cpuid_entry2> entries, int index, int count,
    const HostKvmTraits& host) {
  const uint32_t apic_id = static_cast<uint32_t>(index);
  const uint32_t core_bits = static_cast<uint32_t>(BitsFor(count));
  uint32_t max_basic = 0;
  bool has_0x1f = false;
  for (kvm_cpuid_entry2& e : entries) {
    switch (e.function) {
      case 0x0:
        max_basic = e.eax;
        break;
      case 0x1:
        // EBX[31:24] initial APIC id, [23:16] logical processors per package.
        e.ebx = (e.ebx & 0x0000ffff) | (apic_id << 24) |
                (static_cast<uint32_t>(count) << 16);
        if (count > 1) e.edx |= 1u << 28;  // HTT: the field above is valid
        e.ecx |= 1u << 31;                 // running under a hypervisor
        break;
      case 0x4:
        // EAX[31:26]: cores per package - 1 (deterministic cache params).
        e.eax = (e.eax & 0x03ffffff) | (static_cast<uint32_t>(count - 1) << 26);
        break;
      case 0x1f:
        has_0x1f = true;
        break;
      case 0x80000008:
        // AMD: ECX[7:0] cores per package - 1, [15:12] the APIC id bits
        // that number them (AMD APM vol. 3, CPUID Fn8000_0008_ECX).
        e.ecx = (e.ecx & ~0xf0ffu) | (core_bits << 12) |
                static_cast<uint32_t>(count - 1);
        break;
      case 0x8000001e:
        // AMD: EAX extended APIC id; EBX[7:0] core id, [15:8] threads per
        // core - 1; ECX[7:0] node id, [10:8] nodes per package - 1.
        e.eax = apic_id;
        e.ebx = (e.ebx & ~0xffffu) | (apic_id & 0xff);
        e.ecx = e.ecx & ~0x7ffu;
        break;
      case kKvmCpuidFeatures:
        if (!host.hypercalls_work) e.eax &= ~kKvmHypercallFeatures;
        break;
      default:
        break;
    }
  }
  // Extended topology, made whole rather than patched (see above).
  std::erase_if(entries, [](const kvm_cpuid_entry2& e) {
    return e.function == 0xb || e.function == 0x1f;
  });
  if (max_basic >= 0xb) AppendExtendedTopology(entries, 0xb, apic_id, count);
  if (has_0x1f) AppendExtendedTopology(entries, 0x1f, apic_id, count);
  return entries;
}

uint32_t GuestKvmFeatures(const std::vector<kvm_cpuid_entry2>& guest_cpuid) {
  for (const kvm_cpuid_entry2& e : guest_cpuid) {
    if (e.function == kKvmCpuidFeatures) return e.eax;
  }
  return 0;
}

absl::Status CheckGuestKvmFeatures(uint32_t features, const HostKvmTraits& host) {
  const uint32_t hypercalls = features & kKvmHypercallFeatures;
  if (hypercalls == 0 || host.hypercalls_work) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrFormat(
      "the snapshot's guest was shown KVM features 0x%x that make hypercalls "
      "(PV unhalt, send-IPI, sched-yield, map-GPA-range: CPUID 0x40000001 EAX "
      "0x%x), and this host's KVM is PVM, where a guest's hypercall never "
      "returns: make the snapshot (the template) on this host",
      hypercalls, features));
}

absl::Status ConfigureVcpu(Vcpu& vcpu,
                           const std::vector<kvm_cpuid_entry2>& supported,
                           const LoadedKernel& kernel, int index, int count,
                           const HostKvmTraits& host) {
  SBX_RETURN_IF_ERROR(vcpu.SetCpuid(GuestCpuid(supported, index, count, host)));
  SBX_RETURN_IF_ERROR(vcpu.SetMsrs(BootMsrs()));
  SBX_RETURN_IF_ERROR(vcpu.SetFpu(BootFpu()));
  SBX_ASSIGN_OR_RETURN(kvm_lapic_state lapic, vcpu.GetLapic());
  SetApicReg(lapic, kApicLvtLint0,
             SetDeliveryMode(GetApicReg(lapic, kApicLvtLint0), kApicModeExtInt));
  SetApicReg(lapic, kApicLvtLint1,
             SetDeliveryMode(GetApicReg(lapic, kApicLvtLint1), kApicModeNmi));
  SBX_RETURN_IF_ERROR(vcpu.SetLapic(lapic));
  if (index != 0) return absl::OkStatus();  // APs wait for INIT/SIPI
  SBX_ASSIGN_OR_RETURN(kvm_sregs reset, vcpu.GetSregs());
  SBX_RETURN_IF_ERROR(vcpu.SetSregs(BootSregs(kernel.protocol, reset)));
  return vcpu.SetRegs(BootRegs(kernel));
}

}  // namespace sbx::vmm
