#include "vmm/kvm/kvm.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstdlib>
#include <string>
#include <utility>

#include "base/status.h"
#include "vmm/kvm/kvm_abi.h"

namespace sbx::vmm {
namespace {

// A C-layout header (kvm_abi.h) followed by `n` entries, in one buffer as
// the ioctl expects.
template <typename Header, typename Entry>
class FlexArray {
 public:
  explicit FlexArray(size_t n)
      : words_((sizeof(Header) + n * sizeof(Entry) + 7) / 8, 0) {}
  Header* header() { return reinterpret_cast<Header*>(words_.data()); }
  Entry* entries() {
    return reinterpret_cast<Entry*>(reinterpret_cast<uint8_t*>(words_.data()) +
                                    sizeof(Header));
  }
  void* get() { return words_.data(); }

 private:
  std::vector<uint64_t> words_;  // 8-byte aligned storage
};

absl::Status OpenError(const std::string& path, int err) {
  std::string hint;
  switch (err) {
    case ENOENT:
    case ENODEV:
    case ENXIO:
      hint = " — this kernel exposes no KVM: load kvm_intel or kvm_amd on a "
             "host with hardware virtualization (VT-x/AMD-V) enabled";
      break;
    case EACCES:
    case EPERM:
      hint = " — add the user to group kvm (or run as root)";
      break;
    default:
      break;
  }
  absl::Status s = ErrnoStatus("open", path, err);
  return absl::Status(s.code(), std::string(s.message()) + hint);
}

}  // namespace

const std::vector<RequiredCapability>& RequiredCapabilities() {
  static const auto* caps = new std::vector<RequiredCapability>{
      {KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY", "guest RAM"},
      {KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP", "in-kernel interrupt controllers"},
      {KVM_CAP_PIT2, "KVM_CAP_PIT2", "in-kernel timer"},
      {KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD", "virtqueue kicks"},
      {KVM_CAP_IRQFD, "KVM_CAP_IRQFD", "device interrupts"},
      {KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID", "guest CPUID"},
      {KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR", "x86 task state"},
      {KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT", "pausing vCPUs"},
  };
  return *caps;
}

absl::StatusOr<std::unique_ptr<Kvm>> Kvm::Open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd.valid()) return OpenError(path, errno);

  int version = ::ioctl(fd.get(), KVM_GET_API_VERSION, 0);
  if (version != KVM_API_VERSION) {
    return absl::FailedPreconditionError(
        path + " speaks KVM API version " + std::to_string(version) +
        ", sbx-vmm needs " + std::to_string(KVM_API_VERSION));
  }
  std::string missing;
  for (const RequiredCapability& c : RequiredCapabilities()) {
    if (::ioctl(fd.get(), KVM_CHECK_EXTENSION, c.cap) <= 0) {
      missing += std::string(missing.empty() ? "" : ", ") + c.name + " (" +
                 c.used_for + ")";
    }
  }
  if (!missing.empty()) {
    return absl::FailedPreconditionError(
        path + " lacks capabilities sbx-vmm needs: " + missing +
        " — use a newer host kernel with hardware KVM");
  }
  int mmap_size = ::ioctl(fd.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
  if (mmap_size < static_cast<int>(sizeof(kvm_run))) {
    return ErrnoStatus("KVM_GET_VCPU_MMAP_SIZE", errno);
  }
  return std::unique_ptr<Kvm>(
      new Kvm(std::move(fd), static_cast<size_t>(mmap_size)));
}

int Kvm::CheckExtension(int cap) const {
  int r = ::ioctl(fd_.get(), KVM_CHECK_EXTENSION, cap);
  return r < 0 ? 0 : r;
}

absl::StatusOr<std::vector<kvm_cpuid_entry2>> Kvm::SupportedCpuid() const {
  // KVM says E2BIG until the array is large enough.
  for (size_t n = 64; n <= 4096; n *= 2) {
    FlexArray<abi::Cpuid2Header, kvm_cpuid_entry2> cpuid(n);
    cpuid.header()->nent = static_cast<uint32_t>(n);
    if (::ioctl(fd_.get(), abi::kGetSupportedCpuid, cpuid.get()) == 0) {
      return std::vector<kvm_cpuid_entry2>(
          cpuid.entries(), cpuid.entries() + cpuid.header()->nent);
    }
    if (errno != E2BIG) return ErrnoStatus("KVM_GET_SUPPORTED_CPUID", errno);
  }
  return absl::InternalError("KVM_GET_SUPPORTED_CPUID: more than 4096 entries");
}

absl::StatusOr<std::vector<uint32_t>> Kvm::MsrIndexList() const {
  // The first call, with room for none, says how many there are.
  abi::MsrListHeader probe = {};
  if (::ioctl(fd_.get(), abi::kGetMsrIndexList, &probe) == 0) {
    return std::vector<uint32_t>();
  }
  if (errno != E2BIG) return ErrnoStatus("KVM_GET_MSR_INDEX_LIST", errno);
  FlexArray<abi::MsrListHeader, uint32_t> list(probe.nmsrs);
  list.header()->nmsrs = probe.nmsrs;
  if (::ioctl(fd_.get(), abi::kGetMsrIndexList, list.get()) != 0) {
    return ErrnoStatus("KVM_GET_MSR_INDEX_LIST", errno);
  }
  return std::vector<uint32_t>(list.entries(),
                               list.entries() + list.header()->nmsrs);
}

// --- Vm ---

absl::StatusOr<std::unique_ptr<Vm>> Vm::Create(const Kvm& kvm) {
  UniqueFd fd(::ioctl(kvm.fd(), KVM_CREATE_VM, 0));
  if (!fd.valid()) return ErrnoStatus("KVM_CREATE_VM", errno);
  // Intel VMX needs three pages for the real-mode TSS somewhere the guest
  // does not use; just below the IOAPIC, inside the MMIO hole.
  if (::ioctl(fd.get(), KVM_SET_TSS_ADDR, 0xfffb'd000UL) != 0) {
    return ErrnoStatus("KVM_SET_TSS_ADDR", errno);
  }
  return std::unique_ptr<Vm>(new Vm(kvm, std::move(fd)));
}

absl::Status Vm::SetMemoryRegion(uint32_t slot, uint64_t guest, uint64_t size,
                                 void* host, uint32_t flags) {
  kvm_userspace_memory_region region = {
      .slot = slot,
      .flags = flags,
      .guest_phys_addr = guest,
      .memory_size = size,
      .userspace_addr = reinterpret_cast<uint64_t>(host),
  };
  if (::ioctl(fd_.get(), KVM_SET_USER_MEMORY_REGION, &region) != 0) {
    return ErrnoStatus("KVM_SET_USER_MEMORY_REGION", errno);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint64_t>> Vm::GetDirtyLog(uint32_t slot,
                                                      uint64_t pages) {
  std::vector<uint64_t> bitmap((pages + 63) / 64);
  kvm_dirty_log log = {};
  log.slot = slot;
  log.dirty_bitmap = bitmap.data();
  if (::ioctl(fd_.get(), KVM_GET_DIRTY_LOG, &log) != 0) {
    return ErrnoStatus("KVM_GET_DIRTY_LOG", errno);
  }
  return bitmap;
}

absl::Status Vm::CreateIrqchipAndPit() {
  if (::ioctl(fd_.get(), KVM_CREATE_IRQCHIP, 0) != 0) {
    return ErrnoStatus("KVM_CREATE_IRQCHIP", errno);
  }
  kvm_pit_config pit = {};
  // The PIT's speaker port dummy keeps port 0x61 reads in the kernel.
  pit.flags = KVM_PIT_SPEAKER_DUMMY;
  if (::ioctl(fd_.get(), KVM_CREATE_PIT2, &pit) != 0) {
    return ErrnoStatus("KVM_CREATE_PIT2", errno);
  }
  return absl::OkStatus();
}

absl::Status Vm::RegisterIrqfd(const EventFd& event, uint32_t gsi) {
  kvm_irqfd irqfd = {};
  irqfd.fd = static_cast<uint32_t>(event.fd());
  irqfd.gsi = gsi;
  if (::ioctl(fd_.get(), KVM_IRQFD, &irqfd) != 0) {
    return ErrnoStatus("KVM_IRQFD", errno);
  }
  return absl::OkStatus();
}

absl::Status Vm::RegisterIoeventfd(const EventFd& event, uint64_t addr,
                                   uint32_t len,
                                   std::optional<uint64_t> datamatch) {
  kvm_ioeventfd io = {};
  io.addr = addr;
  io.len = len;
  io.fd = event.fd();
  if (datamatch.has_value()) {
    io.flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
    io.datamatch = *datamatch;
  }
  if (::ioctl(fd_.get(), KVM_IOEVENTFD, &io) != 0) {
    return ErrnoStatus("KVM_IOEVENTFD", errno);
  }
  return absl::OkStatus();
}

absl::Status Vm::SetIrqLine(uint32_t irq, bool level) {
  kvm_irq_level line = {};
  line.irq = irq;
  line.level = level ? 1 : 0;
  if (::ioctl(fd_.get(), KVM_IRQ_LINE, &line) != 0) {
    return ErrnoStatus("KVM_IRQ_LINE", errno);
  }
  return absl::OkStatus();
}

absl::StatusOr<kvm_irqchip> Vm::GetIrqchip(uint32_t chip_id) const {
  kvm_irqchip chip = {};
  chip.chip_id = chip_id;
  if (::ioctl(fd_.get(), KVM_GET_IRQCHIP, &chip) != 0) {
    return ErrnoStatus("KVM_GET_IRQCHIP", errno);
  }
  return chip;
}

absl::Status Vm::SetIrqchip(const kvm_irqchip& chip) {
  if (::ioctl(fd_.get(), KVM_SET_IRQCHIP, &chip) != 0) {
    return ErrnoStatus("KVM_SET_IRQCHIP", errno);
  }
  return absl::OkStatus();
}

absl::StatusOr<kvm_pit_state2> Vm::GetPit2() const {
  kvm_pit_state2 pit = {};
  if (::ioctl(fd_.get(), KVM_GET_PIT2, &pit) != 0) {
    return ErrnoStatus("KVM_GET_PIT2", errno);
  }
  return pit;
}

absl::Status Vm::SetPit2(const kvm_pit_state2& pit) {
  if (::ioctl(fd_.get(), KVM_SET_PIT2, &pit) != 0) {
    return ErrnoStatus("KVM_SET_PIT2", errno);
  }
  return absl::OkStatus();
}

absl::StatusOr<kvm_clock_data> Vm::GetClock() const {
  kvm_clock_data clock = {};
  if (::ioctl(fd_.get(), KVM_GET_CLOCK, &clock) != 0) {
    return ErrnoStatus("KVM_GET_CLOCK", errno);
  }
  return clock;
}

absl::Status Vm::SetClock(const kvm_clock_data& clock) {
  if (::ioctl(fd_.get(), KVM_SET_CLOCK, &clock) != 0) {
    return ErrnoStatus("KVM_SET_CLOCK", errno);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Vcpu>> Vm::CreateVcpu(int index) {
  UniqueFd fd(::ioctl(fd_.get(), KVM_CREATE_VCPU, index));
  if (!fd.valid()) return ErrnoStatus("KVM_CREATE_VCPU", errno);
  size_t size = kvm_.vcpu_mmap_size();
  void* run = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED,
                     fd.get(), 0);
  if (run == MAP_FAILED) return ErrnoStatus("mmap kvm_run", errno);
  return std::unique_ptr<Vcpu>(
      new Vcpu(std::move(fd), index, static_cast<kvm_run*>(run), size));
}

// --- Vcpu ---

Vcpu::~Vcpu() { ::munmap(run_, run_size_); }

absl::Status Vcpu::Run() {
  if (::ioctl(fd_.get(), KVM_RUN, 0) == 0) return absl::OkStatus();
  if (errno == EINTR) return absl::CancelledError("KVM_RUN interrupted");
  // An AP waiting for INIT/SIPI blocks in KVM_RUN; once the signal arrives
  // KVM returns EAGAIN and expects to be called again.
  if (errno == EAGAIN) return absl::UnavailableError("KVM_RUN: vCPU woke up");
  return ErrnoStatus("KVM_RUN", errno);
}

#define SBX_VCPU_GET(Type, name, request)                     \
  absl::StatusOr<Type> Vcpu::name() const {                   \
    Type value = {};                                          \
    if (::ioctl(fd_.get(), request, &value) != 0) {           \
      return ErrnoStatus(#request, errno);                    \
    }                                                         \
    return value;                                             \
  }
#define SBX_VCPU_SET(Type, name, request)                     \
  absl::Status Vcpu::name(const Type& value) {                \
    if (::ioctl(fd_.get(), request, &value) != 0) {           \
      return ErrnoStatus(#request, errno);                    \
    }                                                         \
    return absl::OkStatus();                                  \
  }
SBX_VCPU_GET(kvm_regs, GetRegs, KVM_GET_REGS)
SBX_VCPU_SET(kvm_regs, SetRegs, KVM_SET_REGS)
SBX_VCPU_GET(kvm_sregs, GetSregs, KVM_GET_SREGS)
SBX_VCPU_SET(kvm_sregs, SetSregs, KVM_SET_SREGS)
SBX_VCPU_GET(kvm_fpu, GetFpu, KVM_GET_FPU)
SBX_VCPU_SET(kvm_fpu, SetFpu, KVM_SET_FPU)
SBX_VCPU_GET(kvm_mp_state, GetMpState, KVM_GET_MP_STATE)
SBX_VCPU_SET(kvm_mp_state, SetMpState, KVM_SET_MP_STATE)
SBX_VCPU_GET(abi::Xsave, GetXsave, abi::kGetXsave)
SBX_VCPU_SET(abi::Xsave, SetXsave, abi::kSetXsave)
SBX_VCPU_GET(kvm_xcrs, GetXcrs, KVM_GET_XCRS)
SBX_VCPU_SET(kvm_xcrs, SetXcrs, KVM_SET_XCRS)
SBX_VCPU_GET(kvm_debugregs, GetDebugRegs, KVM_GET_DEBUGREGS)
SBX_VCPU_SET(kvm_debugregs, SetDebugRegs, KVM_SET_DEBUGREGS)
SBX_VCPU_GET(kvm_vcpu_events, GetVcpuEvents, KVM_GET_VCPU_EVENTS)
SBX_VCPU_SET(kvm_vcpu_events, SetVcpuEvents, KVM_SET_VCPU_EVENTS)
SBX_VCPU_GET(kvm_lapic_state, GetLapic, KVM_GET_LAPIC)
SBX_VCPU_SET(kvm_lapic_state, SetLapic, KVM_SET_LAPIC)
#undef SBX_VCPU_GET
#undef SBX_VCPU_SET

absl::Status Vcpu::SetCpuid(const std::vector<kvm_cpuid_entry2>& entries) {
  FlexArray<abi::Cpuid2Header, kvm_cpuid_entry2> cpuid(entries.size());
  cpuid.header()->nent = static_cast<uint32_t>(entries.size());
  std::copy(entries.begin(), entries.end(), cpuid.entries());
  if (::ioctl(fd_.get(), abi::kSetCpuid2, cpuid.get()) != 0) {
    return ErrnoStatus("KVM_SET_CPUID2", errno);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<kvm_msr_entry>> Vcpu::GetMsrs(
    const std::vector<uint32_t>& indices) const {
  std::vector<kvm_msr_entry> read;
  size_t next = 0;
  while (next < indices.size()) {
    const size_t n = indices.size() - next;
    FlexArray<abi::MsrsHeader, kvm_msr_entry> list(n);
    list.header()->nmsrs = static_cast<uint32_t>(n);
    for (size_t i = 0; i < n; ++i) list.entries()[i].index = indices[next + i];
    // Returns how many it read, stopping at the first MSR it cannot read
    // (api.rst, KVM_GET_MSRS): keep those, skip the refused one, go on.
    int got = ::ioctl(fd_.get(), abi::kGetMsrs, list.get());
    if (got < 0) return ErrnoStatus("KVM_GET_MSRS", errno);
    read.insert(read.end(), list.entries(), list.entries() + got);
    next += static_cast<size_t>(got) + 1;
  }
  return read;
}

absl::Status Vcpu::KvmclockCtrl() {
  if (::ioctl(fd_.get(), KVM_KVMCLOCK_CTRL, 0) == 0) return absl::OkStatus();
  if (errno == EINVAL) {
    return absl::FailedPreconditionError(
        "KVM_KVMCLOCK_CTRL: the guest does not use kvmclock");
  }
  return ErrnoStatus("KVM_KVMCLOCK_CTRL", errno);
}

absl::Status Vcpu::SetMsrs(const std::vector<kvm_msr_entry>& msrs) {
  FlexArray<abi::MsrsHeader, kvm_msr_entry> list(msrs.size());
  list.header()->nmsrs = static_cast<uint32_t>(msrs.size());
  std::copy(msrs.begin(), msrs.end(), list.entries());
  int set = ::ioctl(fd_.get(), abi::kSetMsrs, list.get());
  if (set < 0) return ErrnoStatus("KVM_SET_MSRS", errno);
  if (static_cast<size_t>(set) != msrs.size()) {
    char buf[80];
    std::snprintf(buf, sizeof(buf), "KVM_SET_MSRS: KVM refused MSR 0x%x",
                  msrs[static_cast<size_t>(set)].index);
    return absl::InternalError(buf);
  }
  return absl::OkStatus();
}

}  // namespace sbx::vmm
