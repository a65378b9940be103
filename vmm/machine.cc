#include "vmm/machine.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/logging.h"
#include "base/status.h"
#include "base/hex.h"
#include "base/status_macros.h"
#include "vmm/boot/cmdline.h"
#include "vmm/boot/cpu_setup.h"
#include "vmm/boot/layout.h"
#include "vmm/boot/x86_boot.h"
#include "vmm/devices/i8042.h"
#include "vmm/devices/serial.h"
#include "vmm/virtio/blk/block.h"
#include "vmm/virtio/mmio_transport.h"
#include "vmm/virtio/rng/rng.h"
#include "vmm/virtio/vsock/vsock.h"
#include "vmm/snapshot/cpu_state.h"
#include "vmm/snapshot/format.h"
#include "vmm/snapshot/memory_file.h"
#include "vmm/snapshot/working_set.h"

namespace sbx::vmm {
namespace {

namespace vmstate = ::sbx::vmstate::v1;

// The signal that kicks a vCPU thread out of KVM_RUN. Its handler does
// nothing: the point is the EINTR (with immediate_exit set first, so a
// vCPU about to enter the guest leaves at once too).
int KickSignal() { return SIGRTMIN; }

void InstallKickHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa = {};
    sa.sa_handler = [](int) {};
    sigemptyset(&sa.sa_mask);
    sigaction(KickSignal(), &sa, nullptr);  // no SA_RESTART
  });
}

absl::StatusOr<std::vector<uint8_t>> ReadFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus("open", path, errno);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus("fstat", path, errno);
  std::vector<uint8_t> data(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::read(fd.get(), data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus("read", path, errno);
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  data.resize(done);
  return data;
}

void WriteAll(int fd, std::span<const uint8_t> bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // console gone: the guest keeps running
    bytes = bytes.subspan(static_cast<size_t>(n));
  }
}

// The serial console's output, bounded for a file: past `limit` bytes
// (counting what the file held when opened) output is dropped, with one
// line saying so. Called from vCPU threads.
class ConsoleSink {
 public:
  ConsoleSink(int fd, uint64_t limit) : fd_(fd), limit_(limit) {
    struct stat st;
    if (limit_ != 0 && ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
      used_ = static_cast<uint64_t>(st.st_size);
    } else {
      limit_ = 0;  // stdout, a pipe, a terminal: not bounded
    }
  }

  void Write(std::span<const uint8_t> bytes) {
    if (limit_ == 0) {
      WriteAll(fd_, bytes);
      return;
    }
    const uint64_t before = used_.fetch_add(bytes.size());
    if (before >= limit_) return;
    const uint64_t room = limit_ - before;
    WriteAll(fd_, bytes.first(static_cast<size_t>(std::min<uint64_t>(room, bytes.size()))));
    if (bytes.size() >= room) {
      const std::string note = absl::StrCat(
          "\n[sbx-vmm: console output beyond ", limit_, " bytes dropped]\n");
      WriteAll(fd_, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(note.data()),
                                             note.size()));
    }
  }

 private:
  const int fd_;
  uint64_t limit_;
  std::atomic<uint64_t> used_{0};
};


absl::StatusOr<std::string> AbsolutePath(const std::string& path) {
  char* abs = ::realpath(path.c_str(), nullptr);
  if (abs == nullptr) return ErrnoStatus("realpath", path, errno);
  std::string result(abs);
  std::free(abs);
  return result;
}

// 16 random bytes: a snapshot's id.
absl::StatusOr<std::string> NewSnapshotId() {
  std::string id(16, '\0');
  size_t done = 0;
  while (done < id.size()) {
    ssize_t n = ::getrandom(id.data() + done, id.size() - done, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus("getrandom", errno);
    done += static_cast<size_t>(n);
  }
  return id;
}

// VmRSS from /proc/self/status, in bytes (0 if unreadable).
uint64_t ProcessRssBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      return std::strtoull(line.c_str() + 6, nullptr, 10) * 1024;
    }
  }
  return 0;
}

}  // namespace

int ExitStatus(ExitKind kind) {
  switch (kind) {
    case ExitKind::kGuestReset: return 0;
    case ExitKind::kVmmError: return 1;
    case ExitKind::kTripleFault: return 3;
    case ExitKind::kKvmInternalError: return 4;
    case ExitKind::kEntryFailure: return 5;
  }
  return 1;
}

bool HostKvmIsPvm() {
  struct stat st;
  return ::stat("/sys/module/kvm_pvm", &st) == 0;
}

std::string BaseCmdline(bool pvm_host) {
  std::string line =
      "console=ttyS0 reboot=k panic=-1 pci=off acpi=off nomodule "
      "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1";
  if (pvm_host) {
    // shared/PVM.md: PVM's emulator lacks XRSTOR, POPCNT and CLAC/STAC, and
    // its timer calibration is slow. Harmless, but unneeded, on hardware.
    // cx16: a PVM host whose CPUID offers CMPXCHG16B cannot emulate it
    // either (SLUB's double cmpxchg ended a boot with an emulation failure).
    line += " noxsave clearcpuid=popcnt,smap,smep,cx16 tsc=reliable no_timer_check";
  }
  return line;
}

absl::StatusOr<std::unique_ptr<Machine>> Machine::Create(
    const MachineConfig& config) {
  SBX_ASSIGN_OR_RETURN(uint64_t host_memory, HostMemoryBytes());
  SBX_RETURN_IF_ERROR(ValidateConfig(config, host_memory));

  std::unique_ptr<Machine> m(new Machine());
  // Everything that depends only on the inputs comes first, so bad input is
  // reported before KVM is touched.
  SBX_ASSIGN_OR_RETURN(std::vector<uint8_t> image, ReadFile(config.kernel));
  SBX_ASSIGN_OR_RETURN(m->memory_, GuestMemory::Create(config.memory_mib << 20));
  absl::StatusOr<LoadedKernel> kernel =
      LoadKernel(*m->memory_, image, config.boot);
  if (!kernel.ok()) {
    return absl::InvalidArgumentError("--kernel " + config.kernel + ": " +
                                      std::string(kernel.status().message()));
  }
  m->kernel_ = *kernel;
  image.clear();
  image.shrink_to_fit();

  SBX_RETURN_IF_ERROR(m->Build(config, /*append_console=*/false));

  KernelCmdline cmdline(layout::kCmdlineMax);
  SBX_RETURN_IF_ERROR(cmdline.Append(BaseCmdline(HostKvmIsPvm())));
  if (config.has_rootfs) SBX_RETURN_IF_ERROR(cmdline.Append("root=/dev/vda ro"));
  for (const VirtioSlot& slot : m->virtio_slots_) {
    SBX_RETURN_IF_ERROR(cmdline.AddVirtioMmioDevice(
        virtio::MmioTransport::kSize, slot.base, slot.irq));
  }
  absl::Status user = cmdline.Append(config.extra_cmdline);
  if (!user.ok()) {
    return absl::InvalidArgumentError("--cmdline: " + std::string(user.message()));
  }
  m->cmdline_ = cmdline.str();
  SBX_RETURN_IF_ERROR(
      WriteBootData(*m->memory_, m->kernel_, m->cmdline_, config.cpus));

  SBX_ASSIGN_OR_RETURN(std::vector<kvm_cpuid_entry2> supported,
                       m->kvm_->SupportedCpuid());
  const HostKvmTraits host = HostKvmTraitsFor(HostKvmIsPvm());
  m->guest_kvm_features_ =
      GuestKvmFeatures(GuestCpuid(supported, 0, config.cpus, host));
  for (int i = 0; i < config.cpus; ++i) {
    SBX_ASSIGN_OR_RETURN(std::unique_ptr<Vcpu> vcpu, m->vm_->CreateVcpu(i));
    SBX_RETURN_IF_ERROR(
        ConfigureVcpu(*vcpu, supported, m->kernel_, i, config.cpus, host));
    m->vcpus_.push_back(std::move(vcpu));
  }
  return m;
}

absl::Status Machine::Build(const MachineConfig& config, bool append_console) {
  config_ = config;
  if (config.console.empty()) {
    console_.reset(::fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 0));
  } else {
    console_.reset(::open(config.console.c_str(),
                          O_WRONLY | O_CREAT | O_CLOEXEC |
                              (append_console ? O_APPEND : O_TRUNC),
                          0644));
  }
  if (!console_.valid()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--console ", config.console, ": ", std::strerror(errno)));
  }

  SBX_ASSIGN_OR_RETURN(kvm_, Kvm::Open(config.kvm_device));
  SBX_ASSIGN_OR_RETURN(vm_, Vm::Create(*kvm_));
  const auto& regions = memory_->regions();
  for (size_t i = 0; i < regions.size(); ++i) {
    SBX_RETURN_IF_ERROR(vm_->SetMemoryRegion(
        static_cast<uint32_t>(i), regions[i].guest_base, regions[i].size,
        regions[i].host));
  }
  SBX_RETURN_IF_ERROR(vm_->CreateIrqchipAndPit());
  SBX_ASSIGN_OR_RETURN(loop_, EventLoop::Create());
  return SetUpDevices(config);
}

absl::StatusOr<std::unique_ptr<Machine>> Machine::Restore(
    const std::string& dir, const RestoreOptions& options) {
  SBX_ASSIGN_OR_RETURN(vmstate::VmState state,
                       snapshot::ReadVmState(absl::StrCat(dir, "/vmstate")));
  // The configuration the snapshot was taken with, moved where the caller
  // says.
  const vmstate::MachineConfig& saved = state.config();
  MachineConfig config;
  config.kernel = saved.kernel();
  config.cpus = static_cast<int>(std::min<uint32_t>(saved.cpus(), kMaxVcpus + 1));
  config.memory_mib = saved.memory_mib();
  config.has_rootfs = saved.has_rootfs();
  config.rng = saved.rng();
  config.console = options.console.value_or(saved.console());
  config.console_max_bytes = options.console_max_bytes;
  config.kvm_device = options.kvm_device;
  config.restore_dir = dir;
  config.seccomp = options.seccomp;
  for (const vmstate::Disk& disk : saved.disks()) {
    config.disks.push_back({disk.path(), disk.read_only()});
  }
  if (!options.disk_paths.empty()) {
    if (options.disk_paths.size() != config.disks.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the snapshot has ", config.disks.size(), " disks, ",
          options.disk_paths.size(), " paths were given for them"));
    }
    for (size_t i = 0; i < config.disks.size(); ++i) {
      config.disks[i].path = options.disk_paths[i];
    }
  }
  if (saved.has_vsock()) {
    config.vsock = VsockConfig{options.vsock_path.value_or(saved.vsock().uds_path()),
                               saved.vsock().guest_cid()};
  } else if (options.vsock_path.has_value()) {
    return absl::InvalidArgumentError(
        "--vsock: the snapshotted VM has no vsock device");
  }
  if (static_cast<int>(state.vcpus_size()) != config.cpus) {
    return absl::DataLossError(absl::StrCat(
        dir, "/vmstate: ", state.vcpus_size(), " vCPU states for ",
        saved.cpus(), " vCPUs"));
  }
  if (state.memory().ram_bytes() != config.memory_mib << 20) {
    return absl::DataLossError(absl::StrCat(
        dir, "/vmstate: memory layout of ", state.memory().ram_bytes(),
        " bytes for ", config.memory_mib, " MiB of RAM"));
  }
  SBX_ASSIGN_OR_RETURN(uint64_t host_memory, HostMemoryBytes());
  SBX_RETURN_IF_ERROR(ValidateRestoredConfig(config, host_memory));

  // A diff snapshot's RAM is its base's with the diff's pages over it.
  std::string base_dir;  // the full snapshot whose memory is mapped
  std::string base_id;
  std::vector<snapshot::PageRun> diff_runs;
  if (state.has_diff()) {
    const vmstate::MemoryDiff& diff = state.diff();
    base_dir = options.diff_base_dir.value_or(diff.base_dir());
    absl::StatusOr<vmstate::VmState> base =
        snapshot::ReadVmState(absl::StrCat(base_dir, "/vmstate"));
    if (!base.ok()) {
      return Annotate(base.status(),
                      absl::StrCat("the base of diff snapshot ", dir));
    }
    if (base->has_diff()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the base of diff snapshot ", dir, ", ", base_dir,
          ", is a diff snapshot itself"));
    }
    if (base->snapshot_id().empty() ||
        base->snapshot_id() != diff.base_snapshot_id()) {
      return absl::FailedPreconditionError(absl::StrCat(
          base_dir, " is not the snapshot diff snapshot ", dir,
          " was taken against (its id differs)"));
    }
    if (base->memory().ram_bytes() != state.memory().ram_bytes()) {
      return absl::DataLossError(absl::StrCat(
          base_dir, ": RAM size differs from diff snapshot ", dir));
    }
    base_id = base->snapshot_id();
    for (const vmstate::PageRange& range : diff.pages()) {
      diff_runs.push_back({range.file_offset(), range.length()});
    }
  } else {
    base_dir = dir;
    base_id = state.snapshot_id();
  }

  std::unique_ptr<Machine> m(new Machine());
  const std::string memory_path = absl::StrCat(base_dir, "/memory");
  UniqueFd memory_fd(::open(memory_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!memory_fd.valid()) return ErrnoStatus("open", memory_path, errno);
  absl::StatusOr<std::unique_ptr<GuestMemory>> memory =
      GuestMemory::CreateFromFile(std::move(memory_fd), state.memory().ram_bytes());
  if (!memory.ok()) return Annotate(memory.status(), memory_path);
  m->memory_ = *std::move(memory);
  if (state.has_diff()) {
    SBX_RETURN_IF_ERROR(snapshot::ApplyMemoryDiff(
        *m->memory_, absl::StrCat(dir, "/memory"), diff_runs));
  } else {
    m->restored_dir_ = dir;
    m->restored_snapshot_id_ = state.snapshot_id();
    if (options.prefetch != RestoreOptions::Prefetch::kOff) {
      m->StartPrefetch(options.prefetch, options.seccomp);
    }
  }
  // The layout is a function of the RAM size; a snapshot that disagrees
  // was made by something else.
  const auto& regions = m->memory_->regions();
  bool same = static_cast<size_t>(state.memory().regions_size()) == regions.size();
  for (size_t i = 0; same && i < regions.size(); ++i) {
    const vmstate::MemoryRegion& r = state.memory().regions(static_cast<int>(i));
    same = r.guest_base() == regions[i].guest_base && r.size() == regions[i].size &&
           r.file_offset() == regions[i].file_offset;
  }
  if (!same) {
    return absl::DataLossError(
        absl::StrCat(dir, "/vmstate: unexpected guest memory layout"));
  }
  SBX_RETURN_IF_ERROR(m->Build(config, /*append_console=*/true));
  m->config_.restore_dir.clear();
  // Track writes from the first instruction on, against the full snapshot
  // (for a diff: its base, with the diff's pages already written), so a
  // sleeping sandbox's next diff is again against its template.
  SBX_ASSIGN_OR_RETURN(const std::string base_abs, AbsolutePath(base_dir));
  SBX_RETURN_IF_ERROR(m->StartDirtyTracking(base_abs, base_id));
  {
    absl::MutexLock lock(&m->dirty_mu_);
    for (const snapshot::PageRun& run : diff_runs) {
      for (uint64_t page = run.file_offset / 4096;
           page < (run.file_offset + run.length) / 4096; ++page) {
        m->dirty_[page / 64] |= uint64_t{1} << (page % 64);
      }
    }
  }
  absl::Status restored = m->RestoreState(state);
  if (!restored.ok()) return Annotate(restored, absl::StrCat("restoring ", dir));
  return m;
}

void Machine::StartPrefetch(RestoreOptions::Prefetch mode,
                            const seccomp::Options& seccomp_options) {
  const std::string path = absl::StrCat(restored_dir_, "/workingset");
  absl::StatusOr<snapshot::WorkingSet> set =
      snapshot::ReadWorkingSet(path, memory_->ram_bytes());
  if (!set.ok()) {
    if (!absl::IsNotFound(set.status())) {
      SBX_LOG(WARNING) << "no prefetch: " << set.status().message();
    }
    return;
  }
  if (set->snapshot_id.empty() || set->snapshot_id != restored_snapshot_id_) {
    SBX_LOG(WARNING) << "no prefetch: " << path
                     << " was recorded for another snapshot";
    return;
  }
  prefetch_used_ = true;
  if (mode == RestoreOptions::Prefetch::kBeforeRun) {
    snapshot::PrefetchStats stats = snapshot::PrefetchWorkingSet(*memory_, *set);
    prefetched_pages_.store(stats.pages, std::memory_order_release);
    return;
  }
  // The prefetch thread overlaps the guest: it runs under its own filter.
  std::optional<seccomp::Filter> filter;
  if (seccomp_options.mode != seccomp::Mode::kOff) {
    absl::StatusOr<seccomp::Filter> built = seccomp::Filter::Build(
        seccomp::Role::kPrefetch, seccomp_options.mode, {});
    if (!built.ok()) {
      SBX_LOG(WARNING) << "no prefetch: " << built.status().message();
      return;
    }
    filter = *std::move(built);
    seccomp::PrepareProcess();
  }
  const bool hook = seccomp_options.test_violation == seccomp::Role::kPrefetch;
  prefetch_thread_ = std::thread([this, set = *std::move(set),
                                  filter = std::move(filter), hook] {
    if (filter.has_value()) {
      if (absl::Status s = filter->Install(); !s.ok()) {
        SBX_LOG(WARNING) << "no prefetch: " << s.message();
        return;
      }
      if (hook) seccomp::MakeForbiddenSyscall();
    }
    snapshot::PrefetchStats stats =
        snapshot::PrefetchWorkingSet(*memory_, set, &prefetch_stop_);
    prefetched_pages_.store(stats.pages, std::memory_order_release);
  });
}

void Machine::WaitForPrefetch() {
  if (prefetch_thread_.joinable()) prefetch_thread_.join();
}

absl::StatusOr<WorkingSetResult> Machine::SaveWorkingSet(uint64_t window_ms) {
  if (restored_snapshot_id_.empty()) {
    return absl::FailedPreconditionError(
        "working set: the VM was not restored from a full snapshot");
  }
  if (prefetch_used_) {
    return absl::FailedPreconditionError(
        "working set: the VM was restored with prefetch (the prefetched "
        "pages would all count as touched)");
  }
  {
    absl::MutexLock lock(&mu_);
    if (running_ && !paused_) {
      return absl::FailedPreconditionError(
          "working set: the VM is running (Pause it first)");
    }
  }
  SBX_ASSIGN_OR_RETURN(snapshot::WorkingSet set,
                       snapshot::ReadResidentPages(*memory_));
  set.snapshot_id = restored_snapshot_id_;
  set.window_ms = window_ms;
  SBX_RETURN_IF_ERROR(snapshot::WriteWorkingSet(
      absl::StrCat(restored_dir_, "/workingset"), set));
  WorkingSetResult result;
  for (const snapshot::PageRun& r : set.read) result.read_pages += r.length / 4096;
  for (const snapshot::PageRun& r : set.written) result.written_pages += r.length / 4096;
  result.ranges = set.read.size() + set.written.size();
  SBX_LOG(INFO) << "working set of " << restored_dir_ << ": "
                << result.read_pages << " pages read, " << result.written_pages
                << " written, in " << result.ranges << " ranges";
  return result;
}

absl::StatusOr<WorkingSetResult> Machine::RecordWorkingSet(
    const std::string& dir, uint64_t window_ms, RestoreOptions options) {
  options.prefetch = RestoreOptions::Prefetch::kOff;
  SBX_ASSIGN_OR_RETURN(std::unique_ptr<Machine> m, Restore(dir, options));
  if (m->restored_snapshot_id_.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        dir, " is a diff snapshot: record the working set of a full one"));
  }
  // The snapshot's own directory gets the file: a stale one (of an older
  // snapshot there) must not survive a failed recording.
  (void)::unlink(absl::StrCat(dir, "/workingset").c_str());
  MachineExit exit;
  absl::Notification ended;
  std::thread runner([&] {
    exit = m->Run();
    ended.Notify();
  });
  bool paused = false;
  if (!ended.WaitForNotificationWithTimeout(absl::Milliseconds(
          static_cast<int64_t>(window_ms)))) {
    paused = m->Pause().ok();
    // Pause fails only if the VM ended meanwhile: then Run() returns soon.
    if (!paused) ended.WaitForNotification();
  }
  absl::StatusOr<WorkingSetResult> result = m->SaveWorkingSet(window_ms);
  m->Stop();
  if (paused) (void)m->Resume();
  runner.join();
  if (result.ok() && exit.kind != ExitKind::kGuestReset) {
    SBX_LOG(WARNING) << "working set recorded, but the guest ended badly: "
                     << exit.description;
  }
  return result;
}

absl::Status Machine::RestoreState(const vmstate::VmState& state) {
  cmdline_ = state.cmdline();
  SBX_RETURN_IF_ERROR(Annotate(serial_->RestoreState(state.serial()), "serial"));
  SBX_RETURN_IF_ERROR(Annotate(i8042_->RestoreState(state.i8042()), "i8042"));
  if (static_cast<size_t>(state.virtio_size()) != transports_.size()) {
    return absl::DataLossError(absl::StrCat(
        "the snapshot has ", state.virtio_size(),
        " virtio devices, its configuration makes ", transports_.size()));
  }
  for (size_t i = 0; i < transports_.size(); ++i) {
    SBX_RETURN_IF_ERROR(
        transports_[i]->RestoreState(state.virtio(static_cast<int>(i))));
  }

  // vCPUs, in KVM's order (snapshot/cpu_state.h), each after the CPUID it
  // had at boot.
  SBX_ASSIGN_OR_RETURN(snapshot::KvmStateCaps caps,
                       snapshot::ProbeKvmStateCaps(*kvm_));
  SBX_ASSIGN_OR_RETURN(std::vector<kvm_cpuid_entry2> supported,
                       kvm_->SupportedCpuid());
  const HostKvmTraits host = HostKvmTraitsFor(HostKvmIsPvm());
  // The guest kernel chose its paths by the features it was shown at boot;
  // this host must serve them (the CPUID below is this host's own, which
  // the running guest no longer reads).
  if (state.has_kvm_features()) {
    SBX_RETURN_IF_ERROR(CheckGuestKvmFeatures(state.kvm_features(), host));
    guest_kvm_features_ = state.kvm_features();
  }
  for (int i = 0; i < config_.cpus; ++i) {
    SBX_ASSIGN_OR_RETURN(std::unique_ptr<Vcpu> vcpu, vm_->CreateVcpu(i));
    SBX_RETURN_IF_ERROR(
        vcpu->SetCpuid(GuestCpuid(supported, i, config_.cpus, host)));
    absl::Status s = snapshot::RestoreVcpu(*vcpu, caps, state.vcpus(i));
    if (!s.ok()) return Annotate(s, absl::StrCat("vCPU ", i));
    vcpus_.push_back(std::move(vcpu));
  }
  // The VM-wide state once every LAPIC exists; the clock last, so the
  // guest's time goes on from the snapshot's.
  SBX_RETURN_IF_ERROR(snapshot::RestoreVm(*vm_, state.kvm()));
  SBX_RETURN_IF_ERROR(snapshot::SetVmClock(*vm_, state.kvm().clock()));
  for (std::unique_ptr<Vcpu>& vcpu : vcpus_) {
    // Tell a kvmclock guest it was stopped (no soft-lockup alarms); a
    // guest without kvmclock (the test guests) has nothing to tell.
    absl::Status s = vcpu->KvmclockCtrl();
    if (!s.ok() && !absl::IsFailedPrecondition(s)) return s;
  }
  // A kick the guest gave just before the snapshot went to the old VMM's
  // eventfd: kick every queue of an active device once, so the event loop
  // serves what the guest made available (nothing new is a no-op).
  for (size_t i = 0; i < kicks_.size(); ++i) {
    if (transports_[kick_queues_[i].first]->activated()) {
      SBX_RETURN_IF_ERROR(kicks_[i].Signal());
    }
  }
  // The guest's vsock connections have no host ends any more
  // (virtio 1.2 §5.10.6.7).
  if (vsock_ != nullptr) vsock_->SendTransportReset();
  return absl::OkStatus();
}

absl::Status Machine::AddVirtioDevice(std::unique_ptr<virtio::Device> device) {
  const uint32_t irq = kFirstVirtioIrq + static_cast<uint32_t>(virtio_slots_.size());
  if (irq > kLastVirtioIrq) {
    return absl::InvalidArgumentError(
        "too many virtio devices: at most " +
        std::to_string(kLastVirtioIrq - kFirstVirtioIrq + 1));
  }
  const GuestAddress base = kVirtioMmioBase + virtio_slots_.size() * kVirtioMmioSlot;
  const size_t queues = device->queue_max_sizes().size();

  SBX_ASSIGN_OR_RETURN(EventFd irqfd, EventFd::Create());
  SBX_RETURN_IF_ERROR(vm_->RegisterIrqfd(irqfd, irq));
  SBX_ASSIGN_OR_RETURN(std::unique_ptr<virtio::MmioTransport> created,
                       virtio::MmioTransport::Create(*memory_, std::move(device),
                                                     std::move(irqfd)));
  std::shared_ptr<virtio::MmioTransport> transport = std::move(created);
  SBX_RETURN_IF_ERROR(mmio_.Insert(base, virtio::MmioTransport::kSize, transport));
  transports_.push_back(transport);

  // A kick is a 32-bit write of the queue index to QueueNotify; KVM turns
  // each into an eventfd signal without leaving the guest (ioeventfd).
  for (size_t q = 0; q < queues; ++q) {
    SBX_ASSIGN_OR_RETURN(EventFd kick, EventFd::Create());
    SBX_RETURN_IF_ERROR(vm_->RegisterIoeventfd(
        kick, base + virtio::MmioTransport::kQueueNotifyOffset, 4, q));
    const int fd = kick.fd();
    kicks_.push_back(std::move(kick));
    kick_queues_.emplace_back(transports_.size() - 1, static_cast<uint32_t>(q));
    SBX_RETURN_IF_ERROR(loop_->Add(fd, [fd, transport, q] {
      uint64_t count;
      (void)!::read(fd, &count, sizeof(count));
      transport->NotifyQueue(static_cast<uint32_t>(q));
    }));
  }
  virtio_slots_.push_back({base, irq});
  return absl::OkStatus();
}

absl::Status Machine::SetUpDevices(const MachineConfig& config) {
  SBX_ASSIGN_OR_RETURN(EventFd serial_irq, EventFd::Create());
  SBX_RETURN_IF_ERROR(vm_->RegisterIrqfd(serial_irq, Serial::kCom1Irq));
  const int serial_irq_fd = serial_irq.fd();
  irqs_.push_back(std::move(serial_irq));
  auto console = std::make_shared<ConsoleSink>(console_.get(), config.console_max_bytes);
  auto serial = std::make_shared<Serial>(
      [console](std::span<const uint8_t> bytes) { console->Write(bytes); },
      [serial_irq_fd] {
        uint64_t one = 1;
        (void)!::write(serial_irq_fd, &one, sizeof(one));
      });
  SBX_RETURN_IF_ERROR(pio_.Insert(Serial::kCom1Port, Serial::kPortCount, serial));
  serial_ = serial;

  auto i8042 = std::make_shared<I8042>([this] {
    Finish(ExitKind::kGuestReset, "the guest rebooted (i8042 reset)");
  });
  SBX_RETURN_IF_ERROR(pio_.Insert(I8042::kPortBase, I8042::kPortCount, i8042));
  i8042_ = i8042;

  for (size_t i = 0; i < config.disks.size(); ++i) {
    const DiskConfig& disk = config.disks[i];
    UniqueFd fd(::open(disk.path.c_str(),
                       (disk.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC));
    if (!fd.valid()) {
      return absl::InvalidArgumentError("disk " + disk.path + ": " +
                                        std::strerror(errno));
    }
    virtio::Block::Options options;
    options.read_only = disk.read_only;
    options.serial = "sbx-disk-" + std::to_string(i);
    absl::StatusOr<std::unique_ptr<virtio::Block>> block =
        virtio::Block::Create(std::move(fd), options);
    if (!block.ok()) return Annotate(block.status(), "disk " + disk.path);
    SBX_RETURN_IF_ERROR(AddVirtioDevice(std::move(*block)));
  }
  if (config.rng) {
    SBX_RETURN_IF_ERROR(AddVirtioDevice(std::make_unique<virtio::Rng>()));
  }
  if (config.vsock.has_value()) {
    virtio::Vsock::Options options;
    options.uds_path = config.vsock->uds_path;
    options.guest_cid = config.vsock->guest_cid;
    absl::StatusOr<std::unique_ptr<virtio::Vsock>> vsock =
        virtio::Vsock::Create(options, *loop_);
    if (!vsock.ok()) {
      return absl::InvalidArgumentError("--vsock " + options.uds_path + ": " +
                                        std::string(vsock.status().message()));
    }
    virtio::Vsock* device = vsock->get();
    SBX_RETURN_IF_ERROR(AddVirtioDevice(std::move(*vsock)));
    vsock_ = device;
  }
  return absl::OkStatus();
}

Machine::~Machine() {
  prefetch_stop_.store(true);
  WaitForPrefetch();
  Stop();
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
  // The kick handlers hold the transports, and a device (vsock) may need
  // the loop when it goes: release them while the loop still exists.
  if (loop_ != nullptr) {
    for (const EventFd& kick : kicks_) (void)loop_->Remove(kick.fd());
  }
}

MachineExit Machine::Run() {
  InstallKickHandler();
  // Seccomp: every filter is compiled here, before any thread of the VM
  // starts; each thread installs its own at its start (seccomp/policy.h).
  std::optional<seccomp::Filter> loop_filter;
  std::optional<seccomp::Filter> main_filter;
  std::vector<seccomp::Filter> vcpu_filters;
  if (const seccomp::Mode mode = config_.seccomp.mode; mode != seccomp::Mode::kOff) {
    seccomp::PrepareProcess();
    absl::Status built = [&]() -> absl::Status {
      SBX_ASSIGN_OR_RETURN(loop_filter, seccomp::Filter::Build(
                                            seccomp::Role::kEventLoop, mode, {}));
      SBX_ASSIGN_OR_RETURN(main_filter, seccomp::Filter::Build(
                                            seccomp::Role::kMain, mode, {}));
      for (std::unique_ptr<Vcpu>& vcpu : vcpus_) {
        SBX_ASSIGN_OR_RETURN(
            seccomp::Filter f,
            seccomp::Filter::Build(seccomp::Role::kVcpu, mode,
                                   {.pid = 0, .vcpu_fd = vcpu->fd()}));
        vcpu_filters.push_back(std::move(f));
      }
      return absl::OkStatus();
    }();
    if (!built.ok()) return {ExitKind::kVmmError, std::string(built.message())};
  }
  const seccomp::Filter* lf = loop_filter.has_value() ? &*loop_filter : nullptr;
  std::thread loop_thread([this, lf] { LoopThread(lf); });
  {
    absl::MutexLock lock(&mu_);
    running_ = true;
    for (size_t i = 0; i < vcpus_.size(); ++i) {
      Vcpu* v = vcpus_[i].get();
      const seccomp::Filter* f = vcpu_filters.empty() ? nullptr : &vcpu_filters[i];
      threads_.emplace_back([this, v, f] { VcpuLoop(*v, f); });
      vcpu_threads_.push_back(threads_.back().native_handle());
    }
  }
  // This thread's filter only now: a thread inherits its creator's.
  if (main_filter.has_value()) {
    if (absl::Status s = main_filter->Install(); !s.ok()) {
      Finish(ExitKind::kVmmError, std::string(s.message()));
    } else {
      SeccompTestHook(seccomp::Role::kMain);
    }
  }
  for (std::thread& t : threads_) t.join();
  threads_.clear();
  loop_->Stop();
  loop_thread.join();
  absl::MutexLock lock(&mu_);
  vcpu_threads_.clear();
  running_ = false;
  if (!exit_.has_value()) {
    return {ExitKind::kVmmError, "all vCPUs stopped without a reason"};
  }
  return *exit_;
}

void Machine::SeccompTestHook(seccomp::Role role) const {
  if (config_.seccomp.test_violation == role) seccomp::MakeForbiddenSyscall();
}

void Machine::LoopThread(const seccomp::Filter* filter) {
  if (filter != nullptr) {
    if (absl::Status s = filter->Install(); !s.ok()) {
      Finish(ExitKind::kVmmError, std::string(s.message()));
      return;
    }
    SeccompTestHook(seccomp::Role::kEventLoop);
  }
  for (;;) {
    absl::Status s = loop_->Run();
    if (!s.ok()) {
      Finish(ExitKind::kVmmError, "event loop: " + std::string(s.message()));
      return;
    }
    // Stopped: the VM ends, or a pause wants the devices still.
    absl::MutexLock lock(&mu_);
    if (stopping_.load()) return;
    if (!pause_requested_) continue;
    loop_parked_ = true;
    mu_.Await(absl::Condition(
        +[](Machine* m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(m->mu_) {
          return !m->pause_requested_ || m->stopping_.load();
        },
        this));
    loop_parked_ = false;
    if (stopping_.load()) return;
  }
}

absl::Status Machine::Pause() {
  absl::MutexLock lock(&mu_);
  if (!running_ || stopping_.load()) {
    return absl::FailedPreconditionError("Pause: the VM is not running");
  }
  if (pause_requested_) {
    return absl::FailedPreconditionError("Pause: the VM is already paused");
  }
  pause_requested_ = true;
  // immediate_exit first: a vCPU about to enter KVM_RUN leaves at once;
  // the signal gets the ones inside it out (api.rst §5, immediate_exit).
  for (std::unique_ptr<Vcpu>& vcpu : vcpus_) vcpu->run()->immediate_exit = 1;
  for (pthread_t t : vcpu_threads_) pthread_kill(t, KickSignal());
  loop_->Stop();
  mu_.Await(absl::Condition(
      +[](Machine* m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(m->mu_) {
        return m->stopping_.load() ||
               (m->parked_vcpus_ == m->vcpus_.size() && m->loop_parked_);
      },
      this));
  if (stopping_.load()) {
    pause_requested_ = false;
    return absl::FailedPreconditionError("Pause: the VM ended meanwhile");
  }
  paused_ = true;
  return absl::OkStatus();
}

absl::Status Machine::Resume() {
  absl::MutexLock lock(&mu_);
  if (!paused_) return absl::FailedPreconditionError("Resume: the VM is not paused");
  paused_ = false;
  pause_requested_ = false;  // the parked threads wake and run on
  return absl::OkStatus();
}

void Machine::ParkIfPaused(Vcpu& vcpu) {
  absl::MutexLock lock(&mu_);
  if (!pause_requested_ || stopping_.load()) return;
  // KVM_RUN returned EINTR with immediate_exit set: the exit handled
  // before has been completed in the kernel, the vCPU's state is whole.
  ++parked_vcpus_;
  mu_.Await(absl::Condition(
      +[](Machine* m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(m->mu_) {
        return !m->pause_requested_ || m->stopping_.load();
      },
      this));
  --parked_vcpus_;
  if (!stopping_.load()) vcpu.run()->immediate_exit = 0;
}

absl::StatusOr<vmstate::VmState> Machine::SaveState() {
  vmstate::VmState state;
  vmstate::MachineConfig* config = state.mutable_config();
  config->set_memory_mib(config_.memory_mib);
  config->set_cpus(static_cast<uint32_t>(config_.cpus));
  for (const DiskConfig& disk : config_.disks) {
    vmstate::Disk* d = config->add_disks();
    d->set_path(disk.path);
    d->set_read_only(disk.read_only);
  }
  config->set_has_rootfs(config_.has_rootfs);
  config->set_rng(config_.rng);
  if (config_.vsock.has_value()) {
    config->mutable_vsock()->set_uds_path(config_.vsock->uds_path);
    config->mutable_vsock()->set_guest_cid(config_.vsock->guest_cid);
  }
  config->set_console(config_.console);
  config->set_kernel(config_.kernel);
  state.set_cmdline(cmdline_);
  if (guest_kvm_features_.has_value()) state.set_kvm_features(*guest_kvm_features_);
  state.mutable_memory()->set_ram_bytes(memory_->ram_bytes());
  for (const MemoryRegion& r : memory_->regions()) {
    vmstate::MemoryRegion* region = state.mutable_memory()->add_regions();
    region->set_guest_base(r.guest_base);
    region->set_size(r.size);
    region->set_file_offset(r.file_offset);
  }
  SBX_ASSIGN_OR_RETURN(snapshot::KvmStateCaps caps,
                       snapshot::ProbeKvmStateCaps(*kvm_));
  for (std::unique_ptr<Vcpu>& vcpu : vcpus_) {
    absl::StatusOr<vmstate::VcpuState> saved = snapshot::SaveVcpu(*vcpu, caps);
    if (!saved.ok()) {
      return Annotate(saved.status(), absl::StrCat("vCPU ", vcpu->index()));
    }
    *state.add_vcpus() = *std::move(saved);
  }
  SBX_ASSIGN_OR_RETURN(*state.mutable_kvm(), snapshot::SaveVm(*vm_));
  *state.mutable_serial() = serial_->SaveState();
  *state.mutable_i8042() = i8042_->SaveState();
  for (const auto& transport : transports_) *state.add_virtio() = transport->SaveState();
  SBX_ASSIGN_OR_RETURN(std::string id, NewSnapshotId());
  state.set_snapshot_id(id);
  return state;
}

absl::Status Machine::Snapshot(const std::string& dir) {
  return TakeSnapshot(dir, SnapshotKind::kFull).status();
}

absl::StatusOr<SnapshotResult> Machine::TakeSnapshot(const std::string& dir,
                                                     SnapshotKind kind,
                                                     const std::string& base_dir) {
  {
    absl::MutexLock lock(&mu_);
    if (running_ && !paused_) {
      return absl::FailedPreconditionError(
          "Snapshot: the VM is running (Pause it first)");
    }
  }
  if (dir.empty()) return absl::InvalidArgumentError("Snapshot: no directory");
  absl::ReleasableMutexLock dirty_lock(&dirty_mu_);
  // A diff's base, checked before anything is written.
  std::string base_abs;
  if (kind == SnapshotKind::kDiff) {
    if (!dirty_tracking_) {
      return absl::FailedPreconditionError(
          "diff snapshot: no base is tracked (take a full snapshot first, "
          "or restore from one)");
    }
    if (base_dir.empty()) {
      return absl::InvalidArgumentError("diff snapshot: no base directory");
    }
    absl::StatusOr<std::string> abs = AbsolutePath(base_dir);
    if (!abs.ok() || *abs != dirty_base_dir_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "diff snapshot: ", base_dir, " is not the tracked base ",
          dirty_base_dir_));
    }
    absl::StatusOr<vmstate::VmState> base =
        snapshot::ReadVmState(absl::StrCat(*abs, "/vmstate"));
    if (!base.ok()) return Annotate(base.status(), "diff snapshot base");
    if (base->snapshot_id() != dirty_base_id_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "diff snapshot: ", base_dir,
          " holds another snapshot than the tracked base (replaced?)"));
    }
    base_abs = *abs;
  }

  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return ErrnoStatus("mkdir", dir, errno);
  }
  SBX_ASSIGN_OR_RETURN(const std::string dir_abs, AbsolutePath(dir));
  if (kind == SnapshotKind::kDiff && dir_abs == base_abs) {
    return absl::InvalidArgumentError(
        "diff snapshot: the directory is its base's");
  }
  const std::string vmstate_path = absl::StrCat(dir, "/vmstate");
  if (::unlink(vmstate_path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoStatus("unlink", vmstate_path, errno);
  }
  // A working set belongs to the snapshot it was recorded for (it names
  // it, so a stale one would only be ignored; removing it is tidier).
  const std::string workingset_path = absl::StrCat(dir, "/workingset");
  if (::unlink(workingset_path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoStatus("unlink", workingset_path, errno);
  }
  SBX_ASSIGN_OR_RETURN(vmstate::VmState state, SaveState());

  SnapshotResult result;
  const std::string memory_path = absl::StrCat(dir, "/memory");
  if (kind == SnapshotKind::kFull) {
    SBX_ASSIGN_OR_RETURN(snapshot::MemoryFileStats memory,
                         snapshot::WriteMemoryFile(*memory_, memory_path));
    result.memory_data_bytes = memory.data_bytes;
    result.memory_pages = memory_->ram_bytes() / 4096;
  } else {
    SBX_RETURN_IF_ERROR(FoldDirtyLocked());
    std::vector<snapshot::PageRun> runs =
        snapshot::BitmapToRuns(dirty_, memory_->ram_bytes() / 4096);
    SBX_ASSIGN_OR_RETURN(
        snapshot::MemoryFileStats memory,
        snapshot::WriteMemoryDiffFile(*memory_, memory_path, runs));
    result.memory_data_bytes = memory.data_bytes;
    vmstate::MemoryDiff* diff = state.mutable_diff();
    diff->set_base_dir(base_abs);
    diff->set_base_snapshot_id(dirty_base_id_);
    for (const snapshot::PageRun& run : runs) {
      vmstate::PageRange* range = diff->add_pages();
      range->set_file_offset(run.file_offset);
      range->set_length(run.length);
      result.memory_pages += run.length / 4096;
    }
  }
  SBX_RETURN_IF_ERROR(snapshot::WriteVmState(vmstate_path, state));
  SBX_LOG(INFO) << (kind == SnapshotKind::kFull ? "snapshot" : "diff snapshot")
                << " in " << dir << ": " << (result.memory_data_bytes >> 10)
                << " KiB of " << (memory_->ram_bytes() >> 10)
                << " KiB RAM written";
  if (kind == SnapshotKind::kFull) {
    dirty_lock.Release();
    SBX_RETURN_IF_ERROR(StartDirtyTracking(dir_abs, state.snapshot_id()));
  }
  return result;
}

absl::Status Machine::StartDirtyTracking(const std::string& base_dir,
                                         const std::string& base_id) {
  absl::MutexLock lock(&dirty_mu_);
  if (!dirty_tracking_) {
    // KVM_MEM_LOG_DIRTY_PAGES on the existing slots (api.rst §4.35: the
    // flags of a slot may change in place).
    kvm_dirty_log_ = true;
    const auto& regions = memory_->regions();
    for (size_t i = 0; i < regions.size(); ++i) {
      absl::Status s = vm_->SetMemoryRegion(
          static_cast<uint32_t>(i), regions[i].guest_base, regions[i].size,
          regions[i].host, KVM_MEM_LOG_DIRTY_PAGES);
      if (!s.ok()) {
        SBX_LOG(WARNING) << "no KVM dirty-page log (" << s.message()
                         << "): diff snapshots will hold every page";
        kvm_dirty_log_ = false;
        break;
      }
    }
    memory_->StartDirtyTracking();
    dirty_tracking_ = true;
  }
  dirty_.assign((memory_->ram_bytes() / 4096 + 63) / 64, 0);
  // What was written before the base does not count.
  SBX_RETURN_IF_ERROR(FoldDirtyLocked());
  std::fill(dirty_.begin(), dirty_.end(), 0);
  dirty_base_dir_ = base_dir;
  dirty_base_id_ = base_id;
  return absl::OkStatus();
}

absl::Status Machine::FoldDirtyLocked() {
  if (!dirty_tracking_) return absl::OkStatus();
  const uint64_t pages = memory_->ram_bytes() / 4096;
  if (!kvm_dirty_log_) {
    // Conservative: all of RAM.
    std::fill(dirty_.begin(), dirty_.end(), ~uint64_t{0});
    if (pages % 64 != 0) dirty_.back() = (uint64_t{1} << (pages % 64)) - 1;
    return absl::OkStatus();
  }
  const auto& regions = memory_->regions();
  for (size_t i = 0; i < regions.size(); ++i) {
    const uint64_t region_pages = regions[i].size / 4096;
    SBX_ASSIGN_OR_RETURN(
        std::vector<uint64_t> log,
        vm_->GetDirtyLog(static_cast<uint32_t>(i), region_pages));
    const uint64_t first = regions[i].file_offset / 4096;
    for (size_t w = 0; w < log.size(); ++w) {
      for (uint64_t bits = log[w]; bits != 0; bits &= bits - 1) {
        const uint64_t page = first + w * 64 + static_cast<uint64_t>(__builtin_ctzll(bits));
        if (page < pages) dirty_[page / 64] |= uint64_t{1} << (page % 64);
      }
    }
  }
  memory_->CollectDirty(dirty_);
  return absl::OkStatus();
}

MachineStats Machine::Stats() {
  MachineStats stats;
  {
    absl::MutexLock lock(&mu_);
    stats.state = stopping_.load() || !running_ ? MachineState::kStopped
                  : paused_                     ? MachineState::kPaused
                                                : MachineState::kRunning;
  }
  stats.vmm_rss_bytes = ProcessRssBytes();
  stats.guest_memory_bytes = memory_->ram_bytes();
  {
    absl::MutexLock lock(&dirty_mu_);
    if (dirty_tracking_) {
      absl::Status s = FoldDirtyLocked();
      if (!s.ok()) SBX_LOG_EVERY_N_SEC(WARNING, 5) << "Stats: " << s.message();
      stats.dirty_tracking = true;
      stats.dirty_base_dir = dirty_base_dir_;
      for (uint64_t w : dirty_) stats.dirty_pages += static_cast<uint64_t>(__builtin_popcountll(w));
    }
  }
  stats.exits_io = exits_io_.load(std::memory_order_relaxed);
  stats.exits_mmio = exits_mmio_.load(std::memory_order_relaxed);
  stats.exits_other = exits_other_.load(std::memory_order_relaxed);
  return stats;
}

void Machine::Shutdown() {
  Finish(ExitKind::kGuestReset, "shut down over the control channel");
}

void Machine::Stop() { Finish(ExitKind::kGuestReset, "stopped by the VMM"); }

void Machine::Finish(ExitKind kind, std::string description) {
  absl::MutexLock lock(&mu_);
  if (!exit_.has_value()) exit_ = MachineExit{kind, std::move(description)};
  stopping_.store(true);
  for (std::unique_ptr<Vcpu>& vcpu : vcpus_) vcpu->run()->immediate_exit = 1;
  const pthread_t self = pthread_self();
  for (pthread_t t : vcpu_threads_) {
    if (!pthread_equal(t, self)) pthread_kill(t, KickSignal());
  }
}

std::string Machine::Where(Vcpu& vcpu) {
  std::string where = "on vCPU " + std::to_string(vcpu.index());
  absl::StatusOr<kvm_regs> regs = vcpu.GetRegs();
  if (regs.ok()) where += " at rip=" + Hex(regs->rip);
  return where;
}

void Machine::VcpuLoop(Vcpu& vcpu, const seccomp::Filter* filter) {
  // The filter before the first KVM_RUN: the guest never runs unfiltered.
  if (filter != nullptr) {
    if (absl::Status s = filter->Install(); !s.ok()) {
      Finish(ExitKind::kVmmError, std::string(s.message()) + " on vCPU " +
                                      std::to_string(vcpu.index()));
      return;
    }
  }
  bool test_hook = filter != nullptr;  // after the guest's first exit
  kvm_run* run = vcpu.run();
  while (!stopping_.load()) {
    absl::Status s = vcpu.Run();
    if (std::exchange(test_hook, false)) SeccompTestHook(seccomp::Role::kVcpu);
    // Kicked: pause (and run on after Resume) or stop (the loop ends).
    if (absl::IsCancelled(s)) {
      ParkIfPaused(vcpu);
      continue;
    }
    // An AP just started: run again.
    if (absl::IsUnavailable(s)) continue;
    if (!s.ok()) {
      Finish(ExitKind::kVmmError, std::string(s.message()) + " " + Where(vcpu));
      return;
    }
    switch (run->exit_reason) {
      case KVM_EXIT_IO: {
        exits_io_.fetch_add(1, std::memory_order_relaxed);
        // KVM is trusted, but its offsets are checked all the same: the
        // data must lie inside the kvm_run mapping.
        const uint64_t bytes = uint64_t{run->io.size} * run->io.count;
        if (run->io.size == 0 || run->io.size > 8 ||
            run->io.data_offset > vcpu.run_size() ||
            bytes > vcpu.run_size() - run->io.data_offset) {
          Finish(ExitKind::kVmmError, "malformed KVM_EXIT_IO " + Where(vcpu));
          return;
        }
        uint8_t* data = reinterpret_cast<uint8_t*>(run) + run->io.data_offset;
        for (uint32_t i = 0; i < run->io.count; ++i) {
          std::span<uint8_t> one(data + uint64_t{i} * run->io.size, run->io.size);
          if (run->io.direction == KVM_EXIT_IO_OUT) {
            pio_.Write(run->io.port, one);
          } else if (!pio_.Read(run->io.port, one)) {
            std::memset(one.data(), 0xff, one.size());  // nothing there
          }
        }
        break;
      }
      case KVM_EXIT_MMIO: {
        exits_mmio_.fetch_add(1, std::memory_order_relaxed);
        if (run->mmio.len == 0 || run->mmio.len > 8) break;
        std::span<uint8_t> data(run->mmio.data, run->mmio.len);
        if (run->mmio.is_write) {
          if (!mmio_.Write(run->mmio.phys_addr, data)) {
            SBX_LOG_EVERY_N_SEC(DEBUG, 5)
                << "guest wrote unmapped MMIO " << Hex(run->mmio.phys_addr);
          }
        } else if (!mmio_.Read(run->mmio.phys_addr, data)) {
          std::memset(data.data(), 0xff, data.size());
        }
        break;
      }
      case KVM_EXIT_HLT:
        exits_other_.fetch_add(1, std::memory_order_relaxed);
        // The in-kernel LAPIC handles HLT; if it ever exits, run again.
        break;
      case KVM_EXIT_SHUTDOWN:
        Finish(ExitKind::kTripleFault,
               "the guest triple-faulted (KVM_EXIT_SHUTDOWN) " + Where(vcpu));
        return;
      case KVM_EXIT_SYSTEM_EVENT:
        if (run->system_event.type == KVM_SYSTEM_EVENT_RESET) {
          Finish(ExitKind::kGuestReset, "the guest rebooted (system reset)");
        } else {
          Finish(ExitKind::kTripleFault,
                 "the guest shut down (system event " +
                     std::to_string(run->system_event.type) + ") " + Where(vcpu));
        }
        return;
      case KVM_EXIT_INTERNAL_ERROR:
        Finish(ExitKind::kKvmInternalError,
               "KVM internal error, suberror " +
                   std::to_string(run->internal.suberror) +
                   (run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION
                        ? " (instruction emulation failed) "
                        : " ") +
                   Where(vcpu));
        return;
      case KVM_EXIT_FAIL_ENTRY:
        Finish(ExitKind::kEntryFailure,
               "VM entry failed, hardware reason " +
                   Hex(run->fail_entry.hardware_entry_failure_reason) + " " +
                   Where(vcpu));
        return;
      default:
        Finish(ExitKind::kVmmError, "unexpected KVM exit " +
                                        std::to_string(run->exit_reason) + " " +
                                        Where(vcpu));
        return;
    }
  }
}

}  // namespace sbx::vmm
