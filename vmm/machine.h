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
#include "proto/vmstate.pb.h"
#include "vmm/boot/kernel_loader.h"
#include "vmm/config.h"
#include "vmm/devices/bus.h"
#include "vmm/kvm/kvm.h"
#include "vmm/memory/guest_memory.h"
#include "vmm/seccomp/policy.h"
#include "vmm/snapshot/working_set.h"
#include "vmm/virtio/device.h"

namespace sbx::vmm {

namespace virtio {
class MmioTransport;
class Vsock;
}  // namespace virtio
class Serial;
class I8042;

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

// What a restore may change about the snapshotted VM: where its files
// are on this host (sandboxd restores into another directory).
struct RestoreOptions {
  // One path per snapshot disk, in the snapshot's order; empty: the
  // snapshot's paths. Each disk must have the size it had (the guest knows
  // it) and the same read-only flag.
  std::vector<std::string> disk_paths;
  // The vsock device's unix socket; unset: the snapshot's.
  std::optional<std::string> vsock_path;
  // Where the serial console goes; unset: the snapshot's ("" = stdout).
  // A restored VM appends to an existing console file.
  std::optional<std::string> console;
  // MachineConfig::console_max_bytes (counting what the file already holds).
  uint64_t console_max_bytes = uint64_t{16} << 20;
  std::string kvm_device = "/dev/kvm";
  // For a diff snapshot: where its base is now; unset: where it was.
  std::optional<std::string> diff_base_dir;
  // Working-set prefetch: a full snapshot's `workingset` file (recorded by
  // Machine::RecordWorkingSet for the same snapshot) lists the pages a
  // restored guest touches first; they are pre-faulted into the new VM's
  // mapping. A missing file means no prefetch; an unreadable one, or one
  // of another snapshot, is ignored with a warning (it only saves time).
  enum class Prefetch {
    kOff,
    // On a thread of its own, from the moment guest RAM is mapped (early
    // in Restore()) on, overlapping the rest of the restore and the
    // guest's first instructions (the default: restore latency does not
    // wait for it).
    kBackground,
    // Before Restore() returns: the VM then runs without a host fault on
    // any page of the working set (for measurements).
    kBeforeRun,
  };
  Prefetch prefetch = Prefetch::kBackground;
  // Seccomp filters for the restored VM's threads (MachineConfig::seccomp);
  // with kBackground prefetch, its thread is filtered too.
  seccomp::Options seccomp;
};

// What RecordWorkingSet and a prefetching restore report.
struct WorkingSetResult {
  uint64_t read_pages = 0;     // pages the guest only read
  uint64_t written_pages = 0;  // pages it wrote (copied on write)
  uint64_t ranges = 0;         // runs in the file
};

enum class SnapshotKind {
  kFull,  // all of guest RAM
  kDiff,  // only the pages written since the tracked base (below)
};

struct SnapshotResult {
  uint64_t memory_data_bytes = 0;  // guest RAM bytes written to `memory`
  uint64_t memory_pages = 0;  // pages the snapshot holds (a diff: dirty ones)
};

enum class MachineState { kStopped, kRunning, kPaused };

// What Machine::Stats reports (control channel Stats).
struct MachineStats {
  MachineState state = MachineState::kStopped;
  uint64_t vmm_rss_bytes = 0;  // VmRSS of this process
  uint64_t guest_memory_bytes = 0;
  bool dirty_tracking = false;  // a base is tracked (see TakeSnapshot)
  uint64_t dirty_pages = 0;     // pages written since it
  std::string dirty_base_dir;
  uint64_t exits_io = 0;
  uint64_t exits_mmio = 0;
  uint64_t exits_other = 0;
};

// One VM: guest memory, the kernel loaded into it, devices, and vCPUs on
// their own threads, with device work on an event-loop thread.
//
// Lifecycle: Create (boot) or Restore (from a snapshot) -> Run, which
// returns when the VM ends; from other threads meanwhile: Pause ->
// Snapshot -> Resume (or Stop).
class Machine {
 public:
  // Validates `config` (bad input fails with kInvalidArgument before any VM
  // exists), loads the kernel, opens KVM and builds the VM, ready to Run().
  static absl::StatusOr<std::unique_ptr<Machine>> Create(
      const MachineConfig& config);
  // Builds a VM from the snapshot in `dir` (its `vmstate` and `memory`
  // files, as Snapshot writes them), ready to Run() from where the
  // snapshot was taken. Guest RAM maps the memory file MAP_PRIVATE: VMs
  // restored from one snapshot share its clean pages. Open vsock
  // connections do not survive: the guest gets a TRANSPORT_RESET. A diff
  // snapshot (TakeSnapshot kDiff) maps its base's memory and copies the
  // diff's pages over it; a base that is not the one the diff was taken
  // against (snapshot ids differ) fails with kFailedPrecondition.
  // Errors: kInvalidArgument for bad options or a disk that does not fit,
  // kDataLoss / kFailedPrecondition for an unreadable or incompatible
  // snapshot, each saying what is wrong.
  static absl::StatusOr<std::unique_ptr<Machine>> Restore(
      const std::string& dir, const RestoreOptions& options);
  // Makes the working set of the full snapshot in `dir` for later
  // restores: restores it (without prefetch, with `options`), runs the
  // guest for `window_ms` (or until it ends, if sooner), pauses it, reads
  // which pages of its RAM mapping are present (/proc/self/pagemap: the
  // pages the guest and the VMM's devices touched, plus the kernel's
  // fault-around neighbours), writes them as `dir`/workingset, and stops
  // the VM. Errors: those of Restore; kFailedPrecondition for a diff
  // snapshot.
  static absl::StatusOr<WorkingSetResult> RecordWorkingSet(
      const std::string& dir, uint64_t window_ms, RestoreOptions options);
  ~Machine();

  // The working set of this restored VM now (present pages of its RAM
  // mapping), written as `workingset` into the snapshot directory it was
  // restored from. REQUIRES: restored from a full snapshot without
  // prefetch, and paused or ended.
  absl::StatusOr<WorkingSetResult> SaveWorkingSet(uint64_t window_ms);
  // Pages pre-faulted from the snapshot's working set so far (0 without
  // one). With Prefetch::kBackground, WaitForPrefetch() first for the total.
  uint64_t prefetched_pages() const {
    return prefetched_pages_.load(std::memory_order_acquire);
  }
  void WaitForPrefetch();

  // Runs the VM until it ends; returns how. Call once. With
  // config().seccomp.mode other than kOff, every thread of the VM installs
  // its role's filter at its start (vCPUs before their first KVM_RUN, the
  // event loop before it serves), and so does the calling thread (kMain)
  // once it has started them: it then keeps the filter after Run returns,
  // so call Run on a thread that only waits for it and tears the VM down
  // (sbx-vmm's main thread, or a thread of its own). A filter that cannot
  // be built or installed ends the VM before the guest runs (kVmmError).
  MachineExit Run();
  // Ends the VM from another thread (Run() then returns kGuestReset with
  // the description "stopped by the VMM"). Works while paused too.
  void Stop();

  // While Run() runs (from another thread): stops every vCPU outside
  // KVM_RUN, with the exit it was handling completed (KVM's
  // immediate_exit, api.rst §5 "kvm_run"), and parks the device event
  // loop, so that guest memory, virtqueues and device state stay still
  // until Resume(). Returns when all of them are parked. Fails with
  // kFailedPrecondition if the VM is not running, already paused, or ends
  // meanwhile.
  absl::Status Pause();
  // Lets a paused VM run on.
  absl::Status Resume();
  // Writes the VM's snapshot into directory `dir` (created if missing):
  // `memory` (sparse guest RAM) first, then `vmstate`, each atomically
  // (temporary name, fsync, rename); `vmstate` is removed first and
  // written last, so a directory with a `vmstate` holds a complete
  // snapshot. REQUIRES: paused, or Run() not called yet.
  absl::Status Snapshot(const std::string& dir);
  // Snapshot, full or diff. After a full snapshot, and from the start of a
  // VM restored from a full snapshot, the VMM tracks the guest pages
  // written since (KVM's dirty log on every RAM slot, plus the VMM's own
  // writes into guest RAM from device emulation): that snapshot is the
  // tracked base. A kDiff snapshot writes only those pages and names the
  // base (`base_dir`, which must be the tracked base: else
  // kFailedPrecondition); taking one does not move the base, so every diff
  // is against the same full snapshot and diffs never chain. A VM
  // restored from a diff tracks the diff's base, with the diff's pages
  // counted as written. A full snapshot makes itself the new base.
  // REQUIRES: paused, or Run() not called yet.
  absl::StatusOr<SnapshotResult> TakeSnapshot(const std::string& dir,
                                              SnapshotKind kind,
                                              const std::string& base_dir = "");
  // The numbers of control.proto's Stats. Callable from any thread.
  MachineStats Stats();
  // As Stop(), for a client's Shutdown request: Run() returns kGuestReset
  // ("shut down over the control channel"), sbx-vmm exits 0.
  void Shutdown();

  const GuestMemory& memory() const { return *memory_; }
  // The virtio-vsock device, or nullptr without --vsock (the snapshot code
  // calls SendTransportReset() on it after a restore).
  virtio::Vsock* vsock() const { return vsock_; }
  const std::string& cmdline() const { return cmdline_; }
  // What the VM was made from (for a restored VM: the snapshot's, with the
  // restore's paths).
  const MachineConfig& config() const { return config_; }

 private:
  Machine() = default;

  // What Create and Restore share, once memory_ exists: the console, KVM,
  // the VM with its memory slots, irqchip and PIT, the event loop and the
  // devices. `append_console`: open the console without truncating it.
  absl::Status Build(const MachineConfig& config, bool append_console);
  // Reads the restored snapshot's working set and pre-faults it (a thread
  // for kBackground). Quietly nothing without one.
  void StartPrefetch(RestoreOptions::Prefetch mode,
                     const seccomp::Options& seccomp);
  // The snapshot's restore steps after Build (devices, vCPUs, VM state).
  absl::Status RestoreState(const sbx::vmstate::v1::VmState& state);
  absl::Status SetUpDevices(const MachineConfig& config);
  // Puts a virtio device on the MMIO bus at the next slot with the next IRQ,
  // wires its interrupt (irqfd) and queue kicks (ioeventfd -> event loop),
  // and records it for the kernel command line.
  absl::Status AddVirtioDevice(std::unique_ptr<virtio::Device> device);
  // Makes the snapshot named `base_id` in `base_dir` the tracked base:
  // turns on dirty logging (once) and forgets what was written before.
  absl::Status StartDirtyTracking(const std::string& base_dir,
                                  const std::string& base_id);
  // Moves KVM's dirty log and the VMM's own writes into dirty_.
  absl::Status FoldDirtyLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(dirty_mu_);
  // The VmState of the VM as it is now (REQUIRES: paused or not run).
  absl::StatusOr<sbx::vmstate::v1::VmState> SaveState();
  // `filter`: the vCPU's seccomp filter, installed first (nullptr: none).
  void VcpuLoop(Vcpu& vcpu, const seccomp::Filter* filter);
  // Called by a vCPU thread whose KVM_RUN was interrupted: parks it while
  // a pause is requested. Returns at once otherwise.
  void ParkIfPaused(Vcpu& vcpu);
  // The event loop thread's body: runs the loop, parks it during a pause.
  void LoopThread(const seccomp::Filter* filter);
  // The seccomp test hook: makes a forbidden system call if `role` is the
  // one config_.seccomp.test_violation names.
  void SeccompTestHook(seccomp::Role role) const;
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
  // For each of kicks_: the transport (index in transports_) and queue.
  std::vector<std::pair<size_t, uint32_t>> kick_queues_;
  struct VirtioSlot {
    GuestAddress base;
    uint32_t irq;
  };
  std::vector<VirtioSlot> virtio_slots_;
  // The devices, for snapshots.
  std::shared_ptr<Serial> serial_;
  std::shared_ptr<I8042> i8042_;
  std::vector<std::shared_ptr<virtio::MmioTransport>> transports_;
  MachineConfig config_;
  std::string cmdline_;
  // CPUID 0x40000001 EAX as this guest was shown it at boot (unknown for a
  // VM restored from a snapshot older than the field).
  std::optional<uint32_t> guest_kvm_features_;
  LoadedKernel kernel_;
  virtio::Vsock* vsock_ = nullptr;  // owned by its transport

  // Restored from: the snapshot directory and its id ("" when booted or
  // restored from a diff snapshot, which has no working set of its own).
  std::string restored_dir_;
  std::string restored_snapshot_id_;
  bool prefetch_used_ = false;
  // Working-set prefetch (RestoreOptions::Prefetch::kBackground).
  std::thread prefetch_thread_;
  std::atomic<bool> prefetch_stop_{false};
  std::atomic<uint64_t> prefetched_pages_{0};

  // Dirty-page tracking for diff snapshots (TakeSnapshot).
  absl::Mutex dirty_mu_;
  bool dirty_tracking_ ABSL_GUARDED_BY(dirty_mu_) = false;
  // KVM accepted KVM_MEM_LOG_DIRTY_PAGES; if not, every page counts as
  // written (a diff is then as big as a full snapshot, but correct).
  bool kvm_dirty_log_ ABSL_GUARDED_BY(dirty_mu_) = false;
  std::string dirty_base_dir_ ABSL_GUARDED_BY(dirty_mu_);  // absolute
  std::string dirty_base_id_ ABSL_GUARDED_BY(dirty_mu_);
  // Bit i: file page i of guest RAM was written since the base.
  std::vector<uint64_t> dirty_ ABSL_GUARDED_BY(dirty_mu_);

  std::atomic<uint64_t> exits_io_{0};
  std::atomic<uint64_t> exits_mmio_{0};
  std::atomic<uint64_t> exits_other_{0};

  std::atomic<bool> stopping_{false};
  absl::Mutex mu_;
  std::optional<MachineExit> exit_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_;
  std::vector<pthread_t> vcpu_threads_ ABSL_GUARDED_BY(mu_);
  // Pause/Resume: Run() is running; a pause is asked for; it is complete
  // (everything parked); how many vCPU threads and whether the loop thread
  // are parked.
  bool running_ ABSL_GUARDED_BY(mu_) = false;
  bool pause_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool paused_ ABSL_GUARDED_BY(mu_) = false;
  size_t parked_vcpus_ ABSL_GUARDED_BY(mu_) = 0;
  bool loop_parked_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace sbx::vmm

#endif  // SBX_VMM_MACHINE_H_
