// Fuzzes the snapshot files' parsers (vmm/snapshot/format.h): the input is
// a `vmstate` (or `workingset`) file, read with the real readers
// (ReadVmState, ReadWorkingSet: frame magic | version | length | payload |
// CRC-32C, then the protobuf payload and its checks). A mutated file
// almost never keeps its CRC, so each input is also read a second time
// with its length and CRC fixed up, which lets the payload through to the
// protobuf parser.
//
// A VmState that parses is then restored the way Machine::Restore does it
// short of KVM: the serial port and the i8042 from their states, every
// virtio transport state into a fresh transport of its device type (blk,
// rng, vsock) over guest RAM holding the input bytes, and each ready queue
// of a restored active device kicked (a restored guest kicks at once);
// the diff page ranges applied over guest RAM from a memory file.
// vCPU and KVM VM state (snapshot/cpu_state.h) need /dev/kvm and are not
// covered.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "base/event_fd.h"
#include "base/event_loop.h"
#include "fuzz/fuzz_common.h"
#include "proto/vmstate.pb.h"
#include "vmm/devices/i8042.h"
#include "vmm/devices/serial.h"
#include "vmm/snapshot/crc32c.h"
#include "vmm/snapshot/format.h"
#include "vmm/snapshot/memory_file.h"
#include "vmm/snapshot/working_set.h"
#include "vmm/virtio/blk/block.h"
#include "vmm/virtio/mmio_transport.h"
#include "vmm/virtio/rng/rng.h"
#include "vmm/virtio/vsock/vsock.h"

namespace sbx::fuzz {
namespace {

namespace snapshot = vmm::snapshot;
namespace vmstate = sbx::vmstate::v1;
using vmm::virtio::MmioTransport;

constexpr uint64_t kStatusRegister = 0x070;

struct Fixture {
  UniqueFd file;    // the input, as the file the readers open
  std::string path;  // /proc/self/fd/<file>
  UniqueFd memory;  // a memory file for diffs: kRamBytes of 0x5a
  std::string memory_path;
  UniqueFd disk;    // 8 KiB
  std::string dir;
  std::unique_ptr<EventLoop> loop;
};

Fixture& Fix() {
  static Fixture* f = [] {
    auto* f = new Fixture;
    f->file.reset(::memfd_create("sbx-fuzz-vmstate", MFD_CLOEXEC));
    SBX_FUZZ_ASSERT(f->file.valid());
    f->path = "/proc/self/fd/" + std::to_string(f->file.get());
    f->memory.reset(::memfd_create("sbx-fuzz-memory", MFD_CLOEXEC));
    SBX_FUZZ_ASSERT(f->memory.valid());
    std::vector<uint8_t> pattern(kRamBytes, 0x5a);
    SBX_FUZZ_ASSERT(::pwrite(f->memory.get(), pattern.data(), pattern.size(), 0) ==
                    static_cast<ssize_t>(pattern.size()));
    f->memory_path = "/proc/self/fd/" + std::to_string(f->memory.get());
    f->disk.reset(::memfd_create("sbx-fuzz-disk", MFD_CLOEXEC));
    SBX_FUZZ_ASSERT(f->disk.valid() && ::ftruncate(f->disk.get(), 8192) == 0);
    char tmpl[] = "/tmp/sbx-fuzz-vmstate-XXXXXX";
    SBX_FUZZ_ASSERT(::mkdtemp(tmpl) != nullptr);
    f->dir = tmpl;
    absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create();
    SBX_FUZZ_ASSERT(loop.ok());
    f->loop = *std::move(loop);
    std::atexit([] {
      ::unlink((Fix().dir + "/v").c_str());
      ::rmdir(Fix().dir.c_str());
    });
    return f;
  }();
  return *f;
}

void SetFile(Fixture& fix, std::span<const uint8_t> bytes) {
  SBX_FUZZ_ASSERT(::ftruncate(fix.file.get(), 0) == 0);
  if (!bytes.empty()) {
    SBX_FUZZ_ASSERT(::pwrite(fix.file.get(), bytes.data(), bytes.size(), 0) ==
                    static_cast<ssize_t>(bytes.size()));
  }
}

// The device a transport state is for, built as Machine::Build would.
std::unique_ptr<vmm::virtio::Device> DeviceFor(Fixture& fix, uint32_t type,
                                              const vmstate::VmState& state) {
  switch (type) {
    case vmm::virtio::kDeviceTypeBlock: {
      UniqueFd fd(::fcntl(fix.disk.get(), F_DUPFD_CLOEXEC, 0));
      SBX_FUZZ_ASSERT(fd.valid());
      bool read_only = !state.config().disks().empty() &&
                       state.config().disks(0).read_only();
      auto blk = vmm::virtio::Block::Create(std::move(fd),
                                            {.read_only = read_only, .serial = ""});
      SBX_FUZZ_ASSERT(blk.ok());
      return *std::move(blk);
    }
    case vmm::virtio::kDeviceTypeVsock: {
      uint64_t cid = state.config().vsock().guest_cid();
      if (cid < 3 || cid > 0xffff'fffe) cid = 3;
      auto vsock = vmm::virtio::Vsock::Create(
          {.uds_path = fix.dir + "/v", .guest_cid = cid}, *fix.loop);
      SBX_FUZZ_ASSERT(vsock.ok());
      return *std::move(vsock);
    }
    default:
      return std::make_unique<vmm::virtio::Rng>();
  }
}

void Restore(Fixture& fix, const vmstate::VmState& state,
             std::span<const uint8_t> ram_image) {
  vmm::Serial serial([](std::span<const uint8_t>) {}, [] {});
  if (serial.RestoreState(state.serial()).ok()) {
    uint8_t b;
    for (uint64_t reg = 0; reg < vmm::Serial::kPortCount; ++reg) {
      serial.Read(reg, std::span(&b, 1));
    }
  }
  vmm::I8042 i8042([] {});
  if (i8042.RestoreState(state.i8042()).ok()) {
    uint8_t b;
    i8042.Read(0x60, std::span(&b, 1));
    i8042.Read(0x64, std::span(&b, 1));
  }

  vmm::GuestMemory& mem = FuzzMemory();
  LoadImage(mem, ram_image);
  if (state.has_diff()) {
    std::vector<snapshot::PageRun> runs;
    for (const vmstate::PageRange& r : state.diff().pages()) {
      runs.push_back({r.file_offset(), r.length()});
    }
    (void)snapshot::ApplyMemoryDiff(mem, fix.memory_path, runs);
  }

  // At most a few devices: a VM has one transport per device.
  for (int i = 0; i < state.virtio_size() && i < 4; ++i) {
    const vmstate::VirtioTransportState& ts = state.virtio(i);
    absl::StatusOr<EventFd> irq = EventFd::Create();
    SBX_FUZZ_ASSERT(irq.ok());
    absl::StatusOr<std::unique_ptr<MmioTransport>> t = MmioTransport::Create(
        mem, DeviceFor(fix, ts.device_type(), state), *std::move(irq));
    SBX_FUZZ_ASSERT(t.ok());
    if (!(*t)->RestoreState(ts).ok()) {
      // Refused: the transport is back in its reset state.
      SBX_FUZZ_ASSERT(!(*t)->activated());
      continue;
    }
    // What the guest sees: every register, then a kick of every queue.
    for (uint64_t reg = 0; reg < MmioTransport::kConfigOffset + 0x20; reg += 4) {
      uint8_t buf[4];
      (*t)->Read(reg, buf);
    }
    for (int q = 0; q < ts.queues_size(); ++q) (*t)->NotifyQueue(q);
    // The driver resets the device.
    const uint8_t zero[4] = {};
    (*t)->Write(kStatusRegister, zero);
  }
}

void ReadAll(Fixture& fix, std::span<const uint8_t> file) {
  SetFile(fix, file);
  absl::StatusOr<vmstate::VmState> state = snapshot::ReadVmState(fix.path);
  if (state.ok()) {
    Restore(fix, *state, file);
  }
  (void)snapshot::ReadWorkingSet(fix.path, kRamBytes);
}

void RunOne(const uint8_t* data, size_t size) {
  Fixture& fix = Fix();
  std::span<const uint8_t> input(data, size);
  ReadAll(fix, input);

  // Fixed up: the length field says what follows the header, the CRC is
  // right. Only for inputs with a known magic and a whole header and
  // trailer, and only if that changed anything.
  if (size < snapshot::kHeaderBytes + snapshot::kTrailerBytes) return;
  std::vector<uint8_t> fixed(data, data + size);
  const uint32_t length = static_cast<uint32_t>(
      size - snapshot::kHeaderBytes - snapshot::kTrailerBytes);
  std::memcpy(&fixed[12], &length, 4);
  const uint32_t crc =
      snapshot::Crc32c(std::span(fixed).first(size - snapshot::kTrailerBytes));
  std::memcpy(&fixed[size - snapshot::kTrailerBytes], &crc, 4);
  if (fixed != std::vector<uint8_t>(data, data + size)) ReadAll(fix, fixed);
}

// --- Seeds: states as the devices save them.

void WriteSeeds() {
  Fixture& fix = Fix();
  vmm::GuestMemory& mem = FuzzMemory();
  LoadImage(mem, {});

  vmstate::VmState state;
  vmstate::MachineConfig* config = state.mutable_config();
  config->set_memory_mib(64);
  config->set_cpus(1);
  config->add_disks()->set_path("/images/rootfs.ext4");
  config->set_has_rootfs(true);
  config->set_rng(true);
  config->mutable_vsock()->set_uds_path("/run/sbx/v.sock");
  config->mutable_vsock()->set_guest_cid(3);
  config->set_kernel("/images/vmlinux");
  state.set_cmdline("console=ttyS0 root=/dev/vda");
  state.mutable_memory()->set_ram_bytes(uint64_t{64} << 20);
  vmstate::MemoryRegion* region = state.mutable_memory()->add_regions();
  region->set_size(uint64_t{64} << 20);
  vmstate::VcpuState* vcpu = state.add_vcpus();
  vcpu->mutable_regs()->set_rip(0x100000);
  vcpu->mutable_regs()->set_rflags(2);
  state.set_snapshot_id(std::string(16, '\x42'));

  vmm::Serial serial([](std::span<const uint8_t>) {}, [] {});
  const uint8_t lcr = 0x03, ch = 'x';
  serial.Write(3, std::span(&lcr, 1));
  serial.Write(0, std::span(&ch, 1));
  const uint8_t in[] = {'h', 'i'};
  serial.Receive(in);
  *state.mutable_serial() = serial.SaveState();
  vmm::I8042 i8042([] {});
  *state.mutable_i8042() = i8042.SaveState();

  // The three devices, each as its transport saves it, activated over
  // queues laid out in (zeroed) guest RAM.
  for (uint32_t type : {vmm::virtio::kDeviceTypeBlock,
                        vmm::virtio::kDeviceTypeEntropy,
                        vmm::virtio::kDeviceTypeVsock}) {
    absl::StatusOr<EventFd> irq = EventFd::Create();
    SBX_FUZZ_ASSERT(irq.ok());
    auto t = MmioTransport::Create(mem, DeviceFor(fix, type, state),
                                   *std::move(irq));
    SBX_FUZZ_ASSERT(t.ok());
    vmstate::VirtioTransportState ts = (*t)->SaveState();
    ts.set_status(0xf);  // ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
    ts.set_activated(true);
    ts.set_driver_features(vmm::virtio::kFeatureVersion1 |
                           vmm::virtio::kFeatureEventIdx);
    vmm::GuestAddress base = 0x1000;
    for (vmstate::QueueState& qs : *ts.mutable_queues()) {
      const RingLayout r = LayOutRing(base, 16);
      base = r.end;
      qs.set_size(16);
      qs.set_ready(true);
      qs.set_desc_table(r.desc);
      qs.set_avail_ring(r.avail);
      qs.set_used_ring(r.used);
      qs.set_event_idx(true);
    }
    *state.add_virtio() = ts;
  }

  auto frame = [](const google::protobuf::MessageLite& m,
                  const snapshot::FrameKind& kind) {
    std::string payload = m.SerializeAsString();
    return snapshot::EncodeFrame(
        std::span(reinterpret_cast<const uint8_t*>(payload.data()),
                  payload.size()),
        kind);
  };
  WriteSeed("full", frame(state, snapshot::kVmStateFrame));

  vmstate::VmState diff = state;
  diff.mutable_diff()->set_base_dir("/snapshots/base");
  diff.mutable_diff()->set_base_snapshot_id(std::string(16, '\x42'));
  for (uint64_t off : {0x0000, 0x3000, 0x8000}) {
    vmstate::PageRange* p = diff.mutable_diff()->add_pages();
    p->set_file_offset(off);
    p->set_length(0x2000);
  }
  WriteSeed("diff", frame(diff, snapshot::kVmStateFrame));

  vmstate::VmState minimal;
  minimal.mutable_config()->set_memory_mib(1);
  WriteSeed("minimal", frame(minimal, snapshot::kVmStateFrame));

  vmstate::WorkingSet ws;
  ws.set_snapshot_id(std::string(16, '\x42'));
  ws.set_window_ms(500);
  for (uint64_t off : {0x0000, 0x2000}) {
    vmstate::PageRange* p = ws.add_read();
    p->set_file_offset(off);
    p->set_length(0x1000);
  }
  vmstate::PageRange* w = ws.add_written();
  w->set_file_offset(0x4000);
  w->set_length(0x3000);
  WriteSeed("workingset", frame(ws, snapshot::kWorkingSetFrame));
}

}  // namespace
}  // namespace sbx::fuzz

// libFuzzer's entry points: this target's WriteSeeds and RunOne.
SBX_FUZZ_ENTRY_POINTS()
