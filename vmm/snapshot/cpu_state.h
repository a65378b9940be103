#ifndef SBX_VMM_SNAPSHOT_CPU_STATE_H_
#define SBX_VMM_SNAPSHOT_CPU_STATE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/vmstate.pb.h"
#include "vmm/kvm/kvm.h"

namespace sbx::vmm::snapshot {

// KVM's vCPU and VM state to and from vmstate messages. Every function
// needs the vCPUs out of KVM_RUN (paused or not yet run).

// What the host's KVM can save and restore beyond the basics.
struct KvmStateCaps {
  bool xsave = false;        // KVM_CAP_XSAVE, else KVM_GET_FPU
  bool xcrs = false;         // KVM_CAP_XCRS
  bool debugregs = false;    // KVM_CAP_DEBUGREGS
  bool vcpu_events = false;  // KVM_CAP_VCPU_EVENTS
  // KVM_GET_MSR_INDEX_LIST: the MSRs a snapshot saves (those KVM_GET_MSRS
  // will read of them).
  std::vector<uint32_t> msr_indices;
};
absl::StatusOr<KvmStateCaps> ProbeKvmStateCaps(const Kvm& kvm);

// Reads `vcpu`'s state: MP_STATE first (KVM_GET_MP_STATE accepts pending
// INIT/SIPI events into the LAPIC, which the later reads must see), then
// REGS, SREGS, XSAVE (or FPU), XCRS, DEBUGREGS, LAPIC, MSRs, VCPU_EVENTS.
absl::StatusOr<sbx::vmstate::v1::VcpuState> SaveVcpu(Vcpu& vcpu,
                                                    const KvmStateCaps& caps);

// Writes `state` into `vcpu`, whose CPUID the caller has already set as at
// boot, in the order KVM needs (api.rst; as Firecracker and QEMU do):
// MP_STATE, REGS, SREGS, XSAVE (or FPU), XCRS, DEBUGREGS, LAPIC, MSRs,
// VCPU_EVENTS. SREGS before XSAVE and MSRs because CR4/EFER decide which
// of those KVM accepts; LAPIC before MSRs for the TSC deadline timer;
// events last so nothing above clears them. Fails with kFailedPrecondition
// if the state needs something this host's KVM lacks, or if KVM refuses a
// value.
absl::Status RestoreVcpu(Vcpu& vcpu, const KvmStateCaps& caps,
                         const sbx::vmstate::v1::VcpuState& state);

// The VM-wide state: PIC master and slave, IOAPIC, PIT, kvmclock.
absl::StatusOr<sbx::vmstate::v1::KvmVmState> SaveVm(const Vm& vm);
// Restores the irqchip and the PIT; not the clock, which the caller sets
// last (SetVmClock), just before the vCPUs run, so that the guest's time
// resumes where it stopped.
absl::Status RestoreVm(Vm& vm, const sbx::vmstate::v1::KvmVmState& state);
absl::Status SetVmClock(Vm& vm, const sbx::vmstate::v1::ClockState& clock);

}  // namespace sbx::vmm::snapshot

#endif  // SBX_VMM_SNAPSHOT_CPU_STATE_H_
