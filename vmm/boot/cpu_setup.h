#ifndef SBX_VMM_BOOT_CPU_SETUP_H_
#define SBX_VMM_BOOT_CPU_SETUP_H_

#include <linux/kvm.h>

#include <vector>

#include "absl/status/status.h"
#include "vmm/boot/kernel_loader.h"
#include "vmm/kvm/kvm.h"

namespace sbx::vmm {

// The CPU state a vCPU starts the guest with. Pure functions over KVM's
// structures, so they are tested without /dev/kvm; ConfigureVcpu applies
// them.

// Segment and control registers for `protocol`, starting from the vCPU's
// reset state `reset` (which keeps what KVM set, like the APIC base).
// PVH: 32-bit protected mode, paging off. Linux64: long mode with the
// identity page tables WriteBootData wrote.
kvm_sregs BootSregs(BootProtocol protocol, const kvm_sregs& reset);

// General registers for the boot vCPU: RIP at the entry, RBX (PVH) or RSI
// (Linux64) pointing at the boot information.
kvm_regs BootRegs(const LoadedKernel& kernel);

// MSRs every vCPU starts with (SYSCALL MSRs cleared, fast strings, MTRR
// default type write-back).
std::vector<kvm_msr_entry> BootMsrs();

// x87/SSE control words at their power-on values.
kvm_fpu BootFpu();

// KVM's paravirtual features (CPUID 0x40000001 EAX; Linux
// Documentation/virt/kvm/x86/cpuid.rst) that a guest uses by making a
// hypercall (VMCALL/VMMCALL): PV_UNHALT (KVM_HC_KICK_CPU, the paravirtual
// spinlocks' wake-up), PV_SEND_IPI (KVM_HC_SEND_IPI), PV_SCHED_YIELD
// (KVM_HC_SCHED_YIELD) and HC_MAP_GPA_RANGE. The others (kvmclock, steal
// time, PV EOI, PV TLB flush, async PF, poll control) work through MSRs and
// shared memory.
inline constexpr uint32_t kKvmFeaturePvUnhalt = 1u << 7;
inline constexpr uint32_t kKvmFeaturePvSendIpi = 1u << 11;
inline constexpr uint32_t kKvmFeaturePvSchedYield = 1u << 13;
inline constexpr uint32_t kKvmFeatureHcMapGpaRange = 1u << 16;
inline constexpr uint32_t kKvmHypercallFeatures =
    kKvmFeaturePvUnhalt | kKvmFeaturePvSendIpi | kKvmFeaturePvSchedYield |
    kKvmFeatureHcMapGpaRange;
inline constexpr uint32_t kKvmCpuidFeatures = 0x40000001;

// What the host's KVM does for a guest that its CPUID does not say.
struct HostKvmTraits {
  // Whether a guest's hypercall reaches KVM and returns. Not on PVM (see
  // HostKvmTraitsFor).
  bool hypercalls_work = true;
};

// The traits of a host whose /dev/kvm is PVM (`pvm`) or hardware KVM. On
// PVM a guest's kernel code runs in KVM's instruction emulator, and the
// emulator treats VMCALL/VMMCALL as hardware KVM does when it meets one:
// it rewrites the instruction to the host's form and returns to the guest
// so that the CPU re-executes it, which on hardware exits to KVM as a
// hypercall. Under PVM the emulator re-executes it, and rewrites it again:
// that vCPU loops in the host kernel for good (guest_smp's hypercall probe
// shows it; a Linux guest with PV_SEND_IPI hangs bringing up its second
// CPU, its first IPI never sent).
HostKvmTraits HostKvmTraitsFor(bool pvm);

// The CPUID a vCPU sees: what KVM supports, with this vCPU's APIC id and
// the VM's topology (one thread per core, `count` cores in one package)
// filled in, the hypervisor bit set, and none of the hypercall features
// where `host` says hypercalls do not work.
std::vector<kvm_cpuid_entry2> GuestCpuid(
    std::vector<kvm_cpuid_entry2> supported, int index, int count,
    const HostKvmTraits& host);

// KVM's paravirtual features in a guest's CPUID (0x40000001 EAX; 0 if it
// has no such leaf).
uint32_t GuestKvmFeatures(const std::vector<kvm_cpuid_entry2>& guest_cpuid);

// Why a guest that was shown `features` cannot run on `host`, or OK: a
// guest kernel that was shown a hypercall feature makes that hypercall.
absl::Status CheckGuestKvmFeatures(uint32_t features, const HostKvmTraits& host);

// Applies all of the above to `vcpu` (index `index` of `count`), with the
// CPUID made from `supported` (KVM_GET_SUPPORTED_CPUID); vCPU 0 gets
// BootRegs, the others wait for the boot vCPU's INIT/SIPI in the in-kernel
// LAPIC. Also routes LINT0 to ExtINT and LINT1 to NMI.
absl::Status ConfigureVcpu(Vcpu& vcpu,
                           const std::vector<kvm_cpuid_entry2>& supported,
                           const LoadedKernel& kernel, int index, int count,
                           const HostKvmTraits& host);

}  // namespace sbx::vmm

#endif  // SBX_VMM_BOOT_CPU_SETUP_H_
