#ifndef SBX_VMM_MACHINE_H_
#define SBX_VMM_MACHINE_H_

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/event_fd.h"
#include "base/event_loop.h"
#include "base/unique_fd.h"
#include "vmm/boot/kernel_loader.h"
#include "vmm/config.h"
#include "vmm/devices/bus.h"
#include "vmm/kvm/kvm.h"
#include "vmm/memory/guest_memory.h"
#include "vmm/virtio/device.h"

namespace sbx::vmm {

namespace virtio {
class Vsock;
}  // namespace virtio

// How a VM ended. The sbx-vmm exit status follows it (ExitStatus()).
enum class ExitKind {
  kGuestReset,        // the guest rebooted: its way to end the VM (0)
  kVmmError,          // the VMM failed (1)
  kTripleFault,       // KVM_EXIT_SHUTDOWN (3)
  kKvmInternalError,  // KVM_EXIT_INTERNAL_ERROR, e.g. emulation failure (4)
  kEntryFailure,      // KVM_EXIT_FAIL_ENTRY (5)
};
int ExitStatus(ExitKind kind);

struct MachineExit {
  ExitKind kind;
  // One line for a person: the reason, the vCPU and its RIP where known.
  std::string description;
};

// The kernel command line sbx-vmm gives every guest before the user's
// parameters: serial console, reboot through the i8042 (how a guest ends
// its VM), no ACPI/PCI probing; plus, where the host's KVM is PVM (a
// software hypervisor, see shared/PVM.md), the options a guest kernel needs
// there.
std::string BaseCmdline(bool pvm_host);
// True if /dev/kvm is served by kvm_pvm.
bool HostKvmIsPvm();

// Where virtio-mmio devices go: one 4 KiB slot each from kVirtioMmioBase,
// interrupts from kFirstVirtioIrq (IOAPIC pins 5..23).
inline constexpr GuestAddress kVirtioMmioBase = 0xd000'0000;
inline constexpr uint64_t kVirtioMmioSlot = 0x1000;
inline constexpr uint32_t kFirstVirtioIrq = 5;
inline constexpr uint32_t kLastVirtioIrq = 23;

// One VM: guest memory, the kernel loaded into it, devices, and vCPUs on
// their own threads, with device work on an event-loop thread.
class Machine {
 public:
  // Validates `config` (bad input fails with kInvalidArgument before any VM
  // exists), loads the kernel, opens KVM and builds the VM, ready to Run().
  static absl::StatusOr<std::unique_ptr<Machine>> Create(
      const MachineConfig& config);
  ~Machine();

  // Runs the VM until it ends; returns how. Call once.
  MachineExit Run();
  // Ends the VM from another thread (Run() then returns kGuestReset with
  // the description "stopped by the VMM").
  void Stop();

  const GuestMemory& memory() const { return *memory_; }
  // The virtio-vsock device, or nullptr without --vsock (the snapshot code
  // calls SendTransportReset() on it after a restore).
  virtio::Vsock* vsock() const { return vsock_; }
  const std::string& cmdline() const { return cmdline_; }

 private:
  Machine() = default;

  absl::Status SetUpDevices(const MachineConfig& config);
  // Puts a virtio device on the MMIO bus at the next slot with the next IRQ,
  // wires its interrupt (irqfd) and queue kicks (ioeventfd -> event loop),
  // and records it for the kernel command line.
  absl::Status AddVirtioDevice(std::unique_ptr<virtio::Device> device);
  void VcpuLoop(Vcpu& vcpu);
  // Records the first exit and stops everything.
  void Finish(ExitKind kind, std::string description);
  // Describes `vcpu`'s exit with its RIP.
  static std::string Where(Vcpu& vcpu);

  std::unique_ptr<GuestMemory> memory_;
  std::unique_ptr<Kvm> kvm_;
  std::unique_ptr<Vm> vm_;
  std::vector<std::unique_ptr<Vcpu>> vcpus_;
  std::unique_ptr<EventLoop> loop_;
  Bus pio_;
  Bus mmio_;
  UniqueFd console_;
  std::vector<EventFd> irqs_;   // registered irqfds, kept open
  std::vector<EventFd> kicks_;  // registered ioeventfds, kept open
  struct VirtioSlot {
    GuestAddress base;
    uint32_t irq;
  };
  std::vector<VirtioSlot> virtio_slots_;
  std::string cmdline_;
  LoadedKernel kernel_;
  virtio::Vsock* vsock_ = nullptr;  // owned by its transport

  std::atomic<bool> stopping_{false};
  absl::Mutex mu_;
  std::optional<MachineExit> exit_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_;
  std::vector<pthread_t> vcpu_threads_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sbx::vmm

#endif  // SBX_VMM_MACHINE_H_
