// Every device's snapshot state: Save -> Restore into a fresh device ->
// Save gives the same state (after crosvm's devices/src/suspendable.rs
// tests). One parameterised test over all devices, so a new device (or a
// new field a device forgets to restore) shows up here.
#include <fcntl.h>
#include <unistd.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/event_loop.h"
#include "gtest/gtest.h"
#include "vmm/devices/i8042.h"
#include "vmm/devices/serial.h"
#include "vmm/virtio/blk/block.h"
#include "vmm/virtio/mmio_transport.h"
#include "vmm/virtio/rng/rng.h"
#include "vmm/virtio/testing/fake_driver.h"
#include "vmm/virtio/vsock/vsock.h"

namespace sbx::vmm {
namespace {

using virtio::testing::FakeVirtqueue;
using virtio::testing::MmioDriver;

// One device under test, freshly built.
class Subject {
 public:
  virtual ~Subject() = default;
  // Puts the device into a state unlike its initial one, as a guest would.
  virtual void Drive() = 0;
  virtual std::string Save() = 0;
  virtual absl::Status Restore(const std::string& saved) = 0;
};

void WriteByte(BusDevice& dev, uint64_t offset, uint8_t value) {
  dev.Write(offset, std::span(&value, 1));
}

class SerialSubject : public Subject {
 public:
  SerialSubject() : serial_([](std::span<const uint8_t>) {}, [] {}) {}
  void Drive() override {
    WriteByte(serial_, 3, 0x83);  // LCR: DLAB on
    WriteByte(serial_, 0, 0x01);  // DLL: 115200 baud
    WriteByte(serial_, 3, 0x03);  // LCR: 8N1, DLAB off
    WriteByte(serial_, 1, 0x03);  // IER: rx + thre
    WriteByte(serial_, 2, 0x01);  // FCR: FIFO on
    WriteByte(serial_, 7, 0x5a);  // scratch
    WriteByte(serial_, 0, 'x');   // a byte out: THRE pending
    const uint8_t input[] = {'h', 'i'};
    serial_.Receive(input);
  }
  std::string Save() override { return serial_.SaveState().SerializeAsString(); }
  absl::Status Restore(const std::string& saved) override {
    sbx::vmstate::v1::SerialState state;
    if (!state.ParseFromString(saved)) return absl::DataLossError("parse");
    return serial_.RestoreState(state);
  }

 private:
  Serial serial_;
};

class I8042Subject : public Subject {
 public:
  I8042Subject() : i8042_([] {}) {}
  void Drive() override {
    WriteByte(i8042_, 4, 0x60);  // write command byte...
    WriteByte(i8042_, 0, 0x47);
    WriteByte(i8042_, 4, 0xaa);  // self-test: 0x55 waits in the output
    WriteByte(i8042_, 4, 0x20);  // read command byte: 0x47 waits too
  }
  std::string Save() override { return i8042_.SaveState().SerializeAsString(); }
  absl::Status Restore(const std::string& saved) override {
    sbx::vmstate::v1::I8042State state;
    if (!state.ParseFromString(saved)) return absl::DataLossError("parse");
    return i8042_.RestoreState(state);
  }

 private:
  I8042 i8042_;
};

// A virtio device behind its transport, brought up by a driver with every
// queue set up, and a request on queue 0 served.
class VirtioSubject : public Subject {
 public:
  using Factory = std::function<std::unique_ptr<virtio::Device>(EventLoop&)>;
  explicit VirtioSubject(Factory factory) {
    loop_ = *EventLoop::Create();
    mem_ = *GuestMemory::Create(4 << 20);
    transport_ = *virtio::MmioTransport::Create(*mem_, factory(*loop_),
                                                *EventFd::Create());
  }
  void Drive() override {
    MmioDriver driver(*transport_);
    ASSERT_TRUE(driver.Negotiate(driver.DeviceFeatures()));
    std::vector<FakeVirtqueue> queues;
    for (uint32_t q = 0; driver.Write32(MmioDriver::kQueueSel, q),
                  driver.Read32(MmioDriver::kQueueNumMax) != 0;
         ++q) {
      queues.emplace_back(*mem_, 0x10000 + q * 0x10000, 16);
      driver.SetUpQueue(q, queues.back());
    }
    driver.Write32(MmioDriver::kQueueSel, 1);
    driver.DriverOk();
    ASSERT_EQ(driver.Read32(MmioDriver::kStatus) & MmioDriver::kNeedsReset, 0u);
    // Something on queue 0 (blk: a bad request, answered IOERR; rng: 16
    // random bytes; vsock: an rx buffer the device keeps).
    queues[0].Post({{0x100000, 16, false}, {0x100100, 16, true}});
    transport_->NotifyQueue(0);
  }
  std::string Save() override {
    return transport_->SaveState().SerializeAsString();
  }
  absl::Status Restore(const std::string& saved) override {
    sbx::vmstate::v1::VirtioTransportState state;
    if (!state.ParseFromString(saved)) return absl::DataLossError("parse");
    return transport_->RestoreState(state);
  }

 private:
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<GuestMemory> mem_;
  std::unique_ptr<virtio::MmioTransport> transport_;
};

std::string TempFile(const std::string& name, size_t bytes) {
  std::string path = ::testing::TempDir() + name + "_" + std::to_string(::getpid());
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  EXPECT_EQ(::ftruncate(fd.get(), static_cast<off_t>(bytes)), 0);
  return path;
}

std::unique_ptr<virtio::Device> MakeBlock(EventLoop&) {
  static const std::string path = TempFile("device_state_disk", 1 << 20);
  virtio::Block::Options options;
  options.serial = "sbx-disk-0";
  return *virtio::Block::Create(
      UniqueFd(::open(path.c_str(), O_RDWR | O_CLOEXEC)), options);
}

std::unique_ptr<virtio::Device> MakeVsock(EventLoop& loop) {
  static int counter = 0;
  virtio::Vsock::Options options;
  options.uds_path = ::testing::TempDir() + "ds_vsock_" +
                     std::to_string(::getpid()) + "_" + std::to_string(counter++);
  options.guest_cid = 42;
  return *virtio::Vsock::Create(options, loop);
}

struct DeviceCase {
  std::string name;
  std::function<std::unique_ptr<Subject>()> make;
};

class DeviceStateTest : public ::testing::TestWithParam<DeviceCase> {};

TEST_P(DeviceStateTest, SaveRestoreSaveIsIdentical) {
  std::unique_ptr<Subject> original = GetParam().make();
  const std::string initial = original->Save();
  original->Drive();
  if (::testing::Test::HasFatalFailure()) return;
  const std::string saved = original->Save();
  // The driven state is not the initial one (else this test proves little).
  EXPECT_NE(saved, initial);

  std::unique_ptr<Subject> restored = GetParam().make();
  absl::Status s = restored->Restore(saved);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(restored->Save(), saved);
}

TEST_P(DeviceStateTest, GarbageStateIsRefusedWithoutACrash) {
  std::unique_ptr<Subject> subject = GetParam().make();
  // Every field of every message set to a large value: each device must
  // refuse, or accept and stay usable; never crash.
  std::string garbage;
  for (int field = 1; field <= 16; ++field) {
    garbage += static_cast<char>(field << 3);  // varint field
    garbage += "\xff\xff\xff\xff\x0f";
  }
  (void)subject->Restore(garbage);
  (void)subject->Save();
}

INSTANTIATE_TEST_SUITE_P(
    AllDevices, DeviceStateTest,
    ::testing::Values(
        DeviceCase{"Serial", [] { return std::make_unique<SerialSubject>(); }},
        DeviceCase{"I8042", [] { return std::make_unique<I8042Subject>(); }},
        DeviceCase{"VirtioBlk",
                   [] { return std::make_unique<VirtioSubject>(MakeBlock); }},
        DeviceCase{"VirtioRng",
                   [] {
                     return std::make_unique<VirtioSubject>([](EventLoop&) {
                       return std::make_unique<virtio::Rng>();
                     });
                   }},
        DeviceCase{"VirtioVsock",
                   [] { return std::make_unique<VirtioSubject>(MakeVsock); }}),
    [](const ::testing::TestParamInfo<DeviceCase>& info) { return info.param.name; });

}  // namespace
}  // namespace sbx::vmm
