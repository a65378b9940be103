#ifndef SBX_VMM_KVM_KVM_H_
#define SBX_VMM_KVM_KVM_H_

#include <linux/kvm.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "base/event_fd.h"
#include "base/unique_fd.h"
#include "vmm/kvm/kvm_abi.h"

namespace sbx::vmm {

// The KVM capabilities sbx-vmm cannot work without, each with what it is
// for. Kvm::Open refuses a /dev/kvm that lacks any of them.
struct RequiredCapability {
  int cap;
  const char* name;
  const char* used_for;
};
const std::vector<RequiredCapability>& RequiredCapabilities();

// An open /dev/kvm: the system-wide KVM handle.
class Kvm {
 public:
  // Opens `path`, checks the API version and every required capability.
  // Errors say what is missing and what to do about it.
  static absl::StatusOr<std::unique_ptr<Kvm>> Open(
      const std::string& path = "/dev/kvm");

  int fd() const { return fd_.get(); }
  // Size of the kvm_run structure each vCPU maps.
  size_t vcpu_mmap_size() const { return vcpu_mmap_size_; }
  // KVM_CHECK_EXTENSION: 0 if absent, else a capability-specific value.
  int CheckExtension(int cap) const;

  // KVM_GET_SUPPORTED_CPUID: what this host's KVM can offer a guest.
  absl::StatusOr<std::vector<kvm_cpuid_entry2>> SupportedCpuid() const;
  // KVM_GET_MSR_INDEX_LIST: the MSRs a snapshot must save.
  absl::StatusOr<std::vector<uint32_t>> MsrIndexList() const;

 private:
  Kvm(UniqueFd fd, size_t vcpu_mmap_size)
      : fd_(std::move(fd)), vcpu_mmap_size_(vcpu_mmap_size) {}
  UniqueFd fd_;
  size_t vcpu_mmap_size_;
};

// One vCPU's descriptor and its shared kvm_run page.
class Vcpu {
 public:
  ~Vcpu();
  Vcpu(const Vcpu&) = delete;
  Vcpu& operator=(const Vcpu&) = delete;

  int fd() const { return fd_.get(); }
  int index() const { return index_; }
  kvm_run* run() { return run_; }
  size_t run_size() const { return run_size_; }

  // KVM_RUN once. Returns the errno as a status on failure; EINTR (a signal
  // asked the vCPU to stop) comes back as kCancelled, EAGAIN (an AP received
  // its INIT/SIPI; run again) as kUnavailable.
  absl::Status Run();

  // State accessors, one KVM ioctl each (KVM API doc §4). A snapshot
  // calls them with the vCPU out of KVM_RUN, possibly from another thread
  // than the one that runs it: KVM serializes vCPU ioctls (api.rst §1:
  // switching threads only costs performance).
  absl::StatusOr<kvm_regs> GetRegs() const;
  absl::Status SetRegs(const kvm_regs& regs);
  absl::StatusOr<kvm_sregs> GetSregs() const;
  absl::Status SetSregs(const kvm_sregs& sregs);
  absl::StatusOr<kvm_fpu> GetFpu() const;
  absl::Status SetFpu(const kvm_fpu& fpu);
  absl::StatusOr<kvm_mp_state> GetMpState() const;
  absl::Status SetMpState(const kvm_mp_state& state);
  // KVM_GET_XSAVE / KVM_SET_XSAVE (KVM_CAP_XSAVE).
  absl::StatusOr<abi::Xsave> GetXsave() const;
  absl::Status SetXsave(const abi::Xsave& xsave);
  absl::StatusOr<kvm_xcrs> GetXcrs() const;  // KVM_CAP_XCRS
  absl::Status SetXcrs(const kvm_xcrs& xcrs);
  absl::StatusOr<kvm_debugregs> GetDebugRegs() const;  // KVM_CAP_DEBUGREGS
  absl::Status SetDebugRegs(const kvm_debugregs& regs);
  // KVM_CAP_VCPU_EVENTS: pending exceptions, interrupts, NMIs, SMIs.
  absl::StatusOr<kvm_vcpu_events> GetVcpuEvents() const;
  absl::Status SetVcpuEvents(const kvm_vcpu_events& events);
  // Reads the MSRs in `indices` that KVM lets this vCPU read; those KVM
  // refuses (KVM_GET_MSRS stops at the first one it cannot read) are left
  // out of the result.
  absl::StatusOr<std::vector<kvm_msr_entry>> GetMsrs(
      const std::vector<uint32_t>& indices) const;
  // KVM_KVMCLOCK_CTRL: tells a guest using kvmclock that it was paused, so
  // its soft-lockup watchdog does not fire. kFailedPrecondition when the
  // guest has not enabled kvmclock (EINVAL).
  absl::Status KvmclockCtrl();
  absl::Status SetCpuid(const std::vector<kvm_cpuid_entry2>& entries);
  // Sets MSRs; fails unless KVM accepted every one of them.
  absl::Status SetMsrs(const std::vector<kvm_msr_entry>& msrs);
  absl::StatusOr<kvm_lapic_state> GetLapic() const;
  absl::Status SetLapic(const kvm_lapic_state& lapic);

 private:
  friend class Vm;
  Vcpu(UniqueFd fd, int index, kvm_run* run, size_t run_size)
      : fd_(std::move(fd)), index_(index), run_(run), run_size_(run_size) {}
  UniqueFd fd_;
  int index_;
  kvm_run* run_;
  size_t run_size_;
};

// A KVM virtual machine: memory slots, the in-kernel irqchip and PIT,
// irqfds and ioeventfds, and its vCPUs.
class Vm {
 public:
  static absl::StatusOr<std::unique_ptr<Vm>> Create(const Kvm& kvm);

  int fd() const { return fd_.get(); }
  const Kvm& kvm() const { return kvm_; }

  // Maps `size` bytes at host address `host` to guest-physical `guest`.
  absl::Status SetMemoryRegion(uint32_t slot, uint64_t guest, uint64_t size,
                               void* host, uint32_t flags = 0);
  // KVM_GET_DIRTY_LOG: the pages of `slot` (`pages` long) the guest wrote
  // since the slot got KVM_MEM_LOG_DIRTY_PAGES or since the last call (KVM
  // clears the log and write-protects them again). Bit i: page i of the
  // slot.
  absl::StatusOr<std::vector<uint64_t>> GetDirtyLog(uint32_t slot,
                                                    uint64_t pages);
  // Creates the in-kernel PIC + IOAPIC + LAPICs and the PIT (x86). Must come
  // before the vCPUs are created.
  absl::Status CreateIrqchipAndPit();
  // The device raises guest interrupt line `gsi` by signalling `event`.
  absl::Status RegisterIrqfd(const EventFd& event, uint32_t gsi);
  // KVM signals `event` when the guest writes `len` bytes to MMIO address
  // `addr` (instead of exiting to the VMM), optionally only when the value
  // written equals `datamatch`.
  absl::Status RegisterIoeventfd(const EventFd& event, uint64_t addr,
                                 uint32_t len, std::optional<uint64_t> datamatch);
  // Asserts (level 1) or deasserts (0) an interrupt line from the VMM
  // thread directly (KVM_IRQ_LINE); devices use irqfds instead.
  absl::Status SetIrqLine(uint32_t irq, bool level);

  // The in-kernel irqchip's chips (KVM_GET_IRQCHIP: chip_id
  // KVM_IRQCHIP_PIC_MASTER, _PIC_SLAVE or _IOAPIC), the PIT
  // (KVM_GET_PIT2) and kvmclock (KVM_GET_CLOCK).
  absl::StatusOr<kvm_irqchip> GetIrqchip(uint32_t chip_id) const;
  absl::Status SetIrqchip(const kvm_irqchip& chip);
  absl::StatusOr<kvm_pit_state2> GetPit2() const;
  absl::Status SetPit2(const kvm_pit_state2& pit);
  absl::StatusOr<kvm_clock_data> GetClock() const;
  absl::Status SetClock(const kvm_clock_data& clock);

  absl::StatusOr<std::unique_ptr<Vcpu>> CreateVcpu(int index);

 private:
  Vm(const Kvm& kvm, UniqueFd fd) : kvm_(kvm), fd_(std::move(fd)) {}
  const Kvm& kvm_;
  UniqueFd fd_;
};

}  // namespace sbx::vmm

#endif  // SBX_VMM_KVM_KVM_H_
