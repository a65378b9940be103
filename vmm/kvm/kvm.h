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

  absl::StatusOr<kvm_regs> GetRegs() const;
  absl::Status SetRegs(const kvm_regs& regs);
  absl::StatusOr<kvm_sregs> GetSregs() const;
  absl::Status SetSregs(const kvm_sregs& sregs);
  absl::Status SetFpu(const kvm_fpu& fpu);
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

  absl::StatusOr<std::unique_ptr<Vcpu>> CreateVcpu(int index);

 private:
  Vm(const Kvm& kvm, UniqueFd fd) : kvm_(kvm), fd_(std::move(fd)) {}
  const Kvm& kvm_;
  UniqueFd fd_;
};

}  // namespace sbx::vmm

#endif  // SBX_VMM_KVM_KVM_H_
