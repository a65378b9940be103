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

// The CPUID a vCPU sees: what KVM supports, with this vCPU's APIC id and
// the VM's topology (one thread per core, `count` cores in one package)
// filled in, and the hypervisor bit set.
std::vector<kvm_cpuid_entry2> GuestCpuid(
    std::vector<kvm_cpuid_entry2> supported, int index, int count);

// Applies all of the above to `vcpu` (index `index` of `count`); vCPU 0 gets
// BootRegs, the others wait for the boot vCPU's INIT/SIPI in the in-kernel
// LAPIC. Also routes LINT0 to ExtINT and LINT1 to NMI.
absl::Status ConfigureVcpu(Vcpu& vcpu, const Kvm& kvm,
                           const LoadedKernel& kernel, int index, int count);

}  // namespace sbx::vmm

#endif  // SBX_VMM_BOOT_CPU_SETUP_H_
