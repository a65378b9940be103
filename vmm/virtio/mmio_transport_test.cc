#include "vmm/virtio/mmio_transport.h"

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "vmm/virtio/testing/fake_driver.h"

namespace sbx::vmm::virtio {
namespace {

using testing::FakeVirtqueue;
using testing::MmioDriver;

constexpr uint64_t kRamBytes = 1 << 20;
constexpr uint32_t kFakeDeviceType = 42;
constexpr uint64_t kFakeFeature = uint64_t{1} << 3;
constexpr uint64_t kTransportFeatures =
    kFeatureVersion1 | kFeatureIndirectDesc | kFeatureEventIdx;
constexpr GuestAddress kData = 0x40000;

// What the fake device saw, shared with the test (the transport owns the
// device).
struct DeviceLog {
  absl::Mutex mu;
  int activations = 0;
  int resets = 0;
  uint64_t acked_features = 0;
  bool event_idx = false;
  std::vector<size_t> kicks;
  std::array<uint8_t, 8> config = {1, 2, 3, 4, 5, 6, 7, 8};
  bool fail_activation = false;
};

// Two queues (16 and 8 entries), eight bytes of config space. Completes
// every chain it is kicked for with length 0.
class FakeDevice : public Device {
 public:
  explicit FakeDevice(std::shared_ptr<DeviceLog> log) : log_(std::move(log)) {}

  uint32_t device_type() const override { return kFakeDeviceType; }
  uint64_t device_features() const override { return kFakeFeature; }
  std::span<const uint16_t> queue_max_sizes() const override {
    return kSizes;
  }
  void ReadConfig(uint64_t offset, std::span<uint8_t> data) const override {
    absl::MutexLock lock(&log_->mu);
    ReadConfigBytes(log_->config, offset, data);
  }
  void WriteConfig(uint64_t offset, std::span<const uint8_t> data) override {
    absl::MutexLock lock(&log_->mu);
    for (size_t i = 0; i < data.size(); ++i) {
      if (offset + i < log_->config.size()) log_->config[offset + i] = data[i];
    }
  }
  absl::Status Activate(GuestMemory& mem, uint64_t acked_features,
                        std::span<Queue> queues,
                        Interrupt& interrupt) override {
    absl::MutexLock lock(&log_->mu);
    if (log_->fail_activation) return absl::FailedPreconditionError("no");
    ++log_->activations;
    log_->acked_features = acked_features;
    log_->event_idx = queues[0].event_idx;
    mem_ = &mem;
    queues_ = queues;
    interrupt_ = &interrupt;
    return absl::OkStatus();
  }
  void ProcessQueue(size_t index) override {
    {
      absl::MutexLock lock(&log_->mu);
      log_->kicks.push_back(index);
    }
    Queue& q = queues_[index];
    while (std::optional<DescriptorChain> chain = q.Pop(*mem_)) {
      EXPECT_TRUE(q.AddUsed(*mem_, chain->head_index(), 0).ok());
    }
    if (q.NeedsInterrupt(*mem_)) interrupt_->Raise(Interrupt::kUsedBuffer);
  }
  void Reset() override {
    absl::MutexLock lock(&log_->mu);
    ++log_->resets;
    mem_ = nullptr;
    queues_ = {};
    interrupt_ = nullptr;
  }
  void SaveState(sbx::vmstate::v1::VirtioDeviceState&) const override {}
  absl::Status RestoreState(
      const sbx::vmstate::v1::VirtioDeviceState&) override {
    return absl::OkStatus();
  }

 private:
  static constexpr std::array<uint16_t, 2> kSizes = {16, 8};
  std::shared_ptr<DeviceLog> log_;
  GuestMemory* mem_ = nullptr;
  std::span<Queue> queues_;
  Interrupt* interrupt_ = nullptr;
};

class MmioTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto mem = GuestMemory::Create(kRamBytes);
    ASSERT_TRUE(mem.ok()) << mem.status();
    mem_ = *std::move(mem);
    auto irq = EventFd::Create();
    ASSERT_TRUE(irq.ok()) << irq.status();
    auto transport = MmioTransport::Create(
        *mem_, std::make_unique<FakeDevice>(log_), *std::move(irq));
    ASSERT_TRUE(transport.ok()) << transport.status();
    transport_ = *std::move(transport);
    driver_.emplace(*transport_);
    vq0_.emplace(*mem_, 0x1000, 16);
    vq1_.emplace(*mem_, 0x4000, 8);
  }

  // The whole §3.1.1 sequence with both queues.
  void Initialize(uint64_t features = kFeatureVersion1) {
    ASSERT_TRUE(driver_->Negotiate(features));
    driver_->SetUpQueue(0, *vq0_);
    driver_->SetUpQueue(1, *vq1_);
    driver_->DriverOk();
    ASSERT_EQ(driver_->Read32(MmioDriver::kStatus), 0xfu);
  }

  uint64_t ConsumeIrq() {
    absl::StatusOr<uint64_t> n = transport_->interrupt().irq().Consume();
    EXPECT_TRUE(n.ok()) << n.status();
    return n.ok() ? *n : 0;
  }

  int activations() {
    absl::MutexLock lock(&log_->mu);
    return log_->activations;
  }
  std::vector<size_t> kicks() {
    absl::MutexLock lock(&log_->mu);
    return log_->kicks;
  }

  std::shared_ptr<DeviceLog> log_ = std::make_shared<DeviceLog>();
  std::unique_ptr<GuestMemory> mem_;
  std::unique_ptr<MmioTransport> transport_;
  std::optional<MmioDriver> driver_;
  std::optional<FakeVirtqueue> vq0_;
  std::optional<FakeVirtqueue> vq1_;
};

TEST_F(MmioTransportTest, IdentifiesAsAModernVirtioMmioDevice) {
  EXPECT_EQ(driver_->Read32(MmioDriver::kMagicValue), 0x74726976u);
  EXPECT_EQ(driver_->Read32(MmioDriver::kVersion), 2u);
  EXPECT_EQ(driver_->Read32(MmioDriver::kDeviceId), kFakeDeviceType);
  EXPECT_EQ(driver_->DeviceFeatures(), kFakeFeature | kTransportFeatures);
  driver_->Write32(MmioDriver::kDeviceFeaturesSel, 2);
  EXPECT_EQ(driver_->Read32(MmioDriver::kDeviceFeatures), 0u);
  EXPECT_EQ(driver_->Read32(MmioDriver::kStatus), 0u);
  EXPECT_EQ(driver_->Read32(MmioDriver::kConfigGeneration), 0u);
  EXPECT_EQ(MmioTransport::kQueueNotifyOffset, MmioDriver::kQueueNotify);
}

TEST_F(MmioTransportTest, QueueNumMaxPerQueueAndZeroForMissingQueues) {
  driver_->Write32(MmioDriver::kQueueSel, 0);
  EXPECT_EQ(driver_->Read32(MmioDriver::kQueueNumMax), 16u);
  driver_->Write32(MmioDriver::kQueueSel, 1);
  EXPECT_EQ(driver_->Read32(MmioDriver::kQueueNumMax), 8u);
  driver_->Write32(MmioDriver::kQueueSel, 2);
  EXPECT_EQ(driver_->Read32(MmioDriver::kQueueNumMax), 0u);
  EXPECT_EQ(driver_->Read32(MmioDriver::kQueueReady), 0u);
}

TEST_F(MmioTransportTest, InitSequenceActivatesTheDevice) {
  Initialize(kFeatureVersion1 | kFeatureEventIdx | kFakeFeature);
  absl::MutexLock lock(&log_->mu);
  EXPECT_EQ(log_->activations, 1);
  EXPECT_EQ(log_->acked_features,
            kFeatureVersion1 | kFeatureEventIdx | kFakeFeature);
  EXPECT_TRUE(log_->event_idx);
}

TEST_F(MmioTransportTest, FeaturesOkNeedsVersion1) {
  EXPECT_FALSE(driver_->Negotiate(kFakeFeature));
  EXPECT_EQ(driver_->Read32(MmioDriver::kStatus),
            MmioDriver::kAcknowledge | MmioDriver::kDriver);
  // Nor does DRIVER_OK stick without FEATURES_OK.
  driver_->Write32(MmioDriver::kStatus, MmioDriver::kAcknowledge |
                                            MmioDriver::kDriver |
                                            MmioDriver::kDriverOk);
  EXPECT_EQ(driver_->Read32(MmioDriver::kStatus) & MmioDriver::kDriverOk, 0u);
  EXPECT_EQ(activations(), 0);
}

TEST_F(MmioTransportTest, FeaturesOkNeedsOfferedFeaturesOnly) {
  EXPECT_FALSE(driver_->Negotiate(kFeatureVersion1 | (uint64_t{1} << 7)));
  EXPECT_FALSE(driver_->Negotiate(kFeatureVersion1 | (uint64_t{1} << 40)));
  EXPECT_TRUE(driver_->Negotiate(kFeatureVersion1 | kFeatureIndirectDesc));
}

TEST_F(MmioTransportTest, OutOfOrderStatusWritesAreIgnored) {
  // DRIVER before ACKNOWLEDGE.
  driver_->Write32(MmioDriver::kStatus, MmioDriver::kDriver);
  EXPECT_EQ(driver_->Read32(MmioDriver::kStatus), 0u);
  // FEATURES_OK before DRIVER.
  driver_->Write32(MmioDriver::kStatus, MmioDriver::kAcknowledge);
  driver_->Write32(MmioDriver::kStatus,
                   MmioDriver::kAcknowledge | MmioDriver::kFeaturesOk);
  EXPECT_EQ(driver_->Read32(MmioDriver::kStatus), MmioDriver::kAcknowledge);
  // Clearing a bit without a reset.
  ASSERT_TRUE(driver_->Negotiate(kFeatureVersion1));
  driver_->Write32(MmioDriver::kStatus, MmioDriver::kAcknowledge);
  EXPECT_EQ(driver_->Read32(MmioDriver::kStatus),
            MmioDriver::kAcknowledge | MmioDriver::kDriver |
                MmioDriver::kFeaturesOk);
  // After FAILED, only a reset is accepted.
  uint32_t failed = driver_->Read32(MmioDriver::kStatus) | MmioDriver::kFailed;
  driver_->Write32(MmioDriver::kStatus, failed);
  EXPECT_EQ(driver_->Read32(MmioDriver::kStatus), failed);
  driver_->SetUpQueue(0, *vq0_);
  driver_->Write32(MmioDriver::kStatus, failed | MmioDriver::kDriverOk);
  EXPECT_EQ(driver_->Read32(MmioDriver::kStatus), failed);
  EXPECT_EQ(activations(), 0);
  driver_->Write32(MmioDriver::kStatus, 0);
  EXPECT_EQ(driver_->Read32(MmioDriver::kStatus), 0u);
}

TEST_F(MmioTransportTest, DriverFeaturesAreFrozenByFeaturesOk) {
  ASSERT_TRUE(driver_->Negotiate(kFeatureVersion1));
  driver_->Write32(MmioDriver::kDriverFeaturesSel, 0);
  driver_->Write32(MmioDriver::kDriverFeatures,
                   static_cast<uint32_t>(kFakeFeature));
  driver_->SetUpQueue(0, *vq0_);
  driver_->DriverOk();
  absl::MutexLock lock(&log_->mu);
  EXPECT_EQ(log_->acked_features, kFeatureVersion1);
}

TEST_F(MmioTransportTest, QueueRegistersOnlyWritableWhileConfiguring) {
  // Before FEATURES_OK.
  driver_->SetUpQueue(0, *vq0_);
  EXPECT_EQ(driver_->Read32(MmioDriver::kQueueReady), 0u);
  Initialize();
  driver_->Write32(MmioDriver::kQueueSel, 0);
  EXPECT_EQ(driver_->Read32(MmioDriver::kQueueReady), 1u);
  // After DRIVER_OK the queue cannot be disabled or moved.
  driver_->Write32(MmioDriver::kQueueReady, 0);
  EXPECT_EQ(driver_->Read32(MmioDriver::kQueueReady), 1u);
  driver_->Write32(MmioDriver::kQueueDescLow, 0x8000);
  vq0_->Post({{kData, 4, true}});
  driver_->Write32(MmioDriver::kQueueNotify, 0);
  EXPECT_EQ(vq0_->UsedIdx(), 1);  // still the original rings
}

TEST_F(MmioTransportTest, ResetReturnsToTheInitialState) {
  Initialize();
  vq0_->Post({{kData, 4, true}});
  driver_->Write32(MmioDriver::kQueueNotify, 0);
  ASSERT_NE(driver_->Read32(MmioDriver::kInterruptStatus), 0u);
  int resets_before;
  {
    absl::MutexLock lock(&log_->mu);
    resets_before = log_->resets;
  }

  driver_->Write32(MmioDriver::kStatus, 0);
  EXPECT_EQ(driver_->Read32(MmioDriver::kStatus), 0u);
  EXPECT_EQ(driver_->Read32(MmioDriver::kInterruptStatus), 0u);
  driver_->Write32(MmioDriver::kQueueSel, 0);
  EXPECT_EQ(driver_->Read32(MmioDriver::kQueueReady), 0u);
  driver_->Write32(MmioDriver::kQueueSel, 1);
  EXPECT_EQ(driver_->Read32(MmioDriver::kQueueReady), 0u);
  {
    absl::MutexLock lock(&log_->mu);
    EXPECT_EQ(log_->resets, resets_before + 1);
  }
  // Kicks are ignored until the driver initializes again.
  vq0_->Post({{kData, 4, true}});
  driver_->Write32(MmioDriver::kQueueNotify, 0);
  EXPECT_EQ(vq0_->UsedIdx(), 1);
  EXPECT_EQ(kicks().size(), 1u);

  // A fresh initialization works (queue indices restart at 0).
  FakeVirtqueue fresh(*mem_, 0x8000, 16);
  ASSERT_TRUE(driver_->Negotiate(kFeatureVersion1));
  driver_->SetUpQueue(0, fresh);
  driver_->DriverOk();
  EXPECT_EQ(activations(), 2);
  fresh.Post({{kData, 4, true}});
  driver_->Write32(MmioDriver::kQueueNotify, 0);
  EXPECT_EQ(fresh.UsedIdx(), 1);
}

TEST_F(MmioTransportTest, RegistersNeedAligned32BitAccesses) {
  std::array<uint8_t, 2> half{0xff, 0xff};
  transport_->Read(MmioDriver::kMagicValue, half);
  EXPECT_EQ(half, (std::array<uint8_t, 2>{0, 0}));
  std::array<uint8_t, 8> wide;
  wide.fill(0xff);
  transport_->Read(MmioDriver::kMagicValue, wide);
  EXPECT_EQ(wide, (std::array<uint8_t, 8>{}));
  std::array<uint8_t, 4> word;
  word.fill(0xff);
  transport_->Read(MmioDriver::kMagicValue + 2, word);  // misaligned
  EXPECT_EQ(word, (std::array<uint8_t, 4>{}));

  // A 1-byte Status write is ignored.
  std::array<uint8_t, 1> ack = {MmioDriver::kAcknowledge};
  transport_->Write(MmioDriver::kStatus, ack);
  EXPECT_EQ(driver_->Read32(MmioDriver::kStatus), 0u);
  // Unknown registers read as 0 and ignore writes.
  EXPECT_EQ(driver_->Read32(0x0e0), 0u);
  driver_->Write32(0x0e0, 1);
}

TEST_F(MmioTransportTest, ConfigSpaceTakes8To32BitAccesses) {
  std::array<uint8_t, 1> b;
  transport_->Read(MmioDriver::kConfig + 2, b);
  EXPECT_EQ(b[0], 3);
  std::array<uint8_t, 2> h;
  transport_->Read(MmioDriver::kConfig + 6, h);
  EXPECT_EQ(h, (std::array<uint8_t, 2>{7, 8}));
  EXPECT_EQ(driver_->Read32(MmioDriver::kConfig + 4), 0x08070605u);
  // Beyond the device's 8 bytes: zeros.
  EXPECT_EQ(driver_->Read32(MmioDriver::kConfig + 8), 0u);
  // 64-bit and misaligned accesses are refused.
  std::array<uint8_t, 8> wide;
  wide.fill(0xff);
  transport_->Read(MmioDriver::kConfig, wide);
  EXPECT_EQ(wide, (std::array<uint8_t, 8>{}));
  h.fill(0xff);
  transport_->Read(MmioDriver::kConfig + 1, h);
  EXPECT_EQ(h, (std::array<uint8_t, 2>{0, 0}));

  std::array<uint8_t, 1> w = {0x99};
  transport_->Write(MmioDriver::kConfig + 1, w);
  EXPECT_EQ(driver_->Read32(MmioDriver::kConfig), 0x04039901u);
  std::array<uint8_t, 8> wide_write{};
  transport_->Write(MmioDriver::kConfig, wide_write);
  EXPECT_EQ(driver_->Read32(MmioDriver::kConfig), 0x04039901u);
}

TEST_F(MmioTransportTest, UsedBuffersRaiseTheInterrupt) {
  Initialize();
  EXPECT_EQ(ConsumeIrq(), 0u);
  uint16_t head = vq0_->Post({{kData, 4, true}});
  driver_->Write32(MmioDriver::kQueueNotify, 0);
  EXPECT_EQ(kicks(), std::vector<size_t>{0});
  ASSERT_EQ(vq0_->UsedIdx(), 1);
  EXPECT_EQ(vq0_->Used(0).id, head);
  EXPECT_GE(ConsumeIrq(), 1u);
  EXPECT_EQ(driver_->Read32(MmioDriver::kInterruptStatus),
            Interrupt::kUsedBuffer);

  driver_->Write32(MmioDriver::kInterruptAck, Interrupt::kUsedBuffer);
  EXPECT_EQ(driver_->Read32(MmioDriver::kInterruptStatus), 0u);

  // The event-loop path (ioeventfd) on the second queue.
  vq1_->Post({{kData, 4, true}});
  transport_->NotifyQueue(1);
  EXPECT_EQ(kicks(), (std::vector<size_t>{0, 1}));
  EXPECT_EQ(vq1_->UsedIdx(), 1);
  EXPECT_GE(ConsumeIrq(), 1u);
  EXPECT_EQ(driver_->Read32(MmioDriver::kInterruptStatus),
            Interrupt::kUsedBuffer);
}

TEST_F(MmioTransportTest, SuppressedInterruptsAreNotSignalled) {
  Initialize();
  vq0_->SetAvailFlags(kAvailFNoInterrupt);
  vq0_->Post({{kData, 4, true}});
  driver_->Write32(MmioDriver::kQueueNotify, 0);
  EXPECT_EQ(vq0_->UsedIdx(), 1);
  EXPECT_EQ(ConsumeIrq(), 0u);
  EXPECT_EQ(driver_->Read32(MmioDriver::kInterruptStatus), 0u);
}

TEST_F(MmioTransportTest, KicksBeforeDriverOkOrOfMissingQueuesAreIgnored) {
  vq0_->Post({{kData, 4, true}});
  driver_->Write32(MmioDriver::kQueueNotify, 0);
  transport_->NotifyQueue(0);
  EXPECT_TRUE(kicks().empty());
  Initialize();
  driver_->Write32(MmioDriver::kQueueNotify, 2);
  transport_->NotifyQueue(0xffff'ffff);
  EXPECT_TRUE(kicks().empty());
  EXPECT_EQ(vq0_->UsedIdx(), 0);
}

TEST_F(MmioTransportTest, UnusableQueueAtDriverOkNeedsReset) {
  ASSERT_TRUE(driver_->Negotiate(kFeatureVersion1));
  driver_->SetUpQueue(0, *vq0_);
  driver_->Write32(MmioDriver::kQueueNum, 12);  // ignored: queue is ready
  driver_->Write32(MmioDriver::kQueueReady, 0);
  driver_->Write32(MmioDriver::kQueueNum, 12);  // not a power of 2
  driver_->Write32(MmioDriver::kQueueReady, 1);
  driver_->DriverOk();
  EXPECT_EQ(driver_->Read32(MmioDriver::kStatus),
            0xfu | MmioDriver::kNeedsReset);
  EXPECT_EQ(activations(), 0);
  // §2.1.2: the driver is told through a configuration change interrupt.
  EXPECT_GE(ConsumeIrq(), 1u);
  EXPECT_EQ(driver_->Read32(MmioDriver::kInterruptStatus),
            Interrupt::kConfigChange);
  vq0_->Post({{kData, 4, true}});
  driver_->Write32(MmioDriver::kQueueNotify, 0);
  EXPECT_TRUE(kicks().empty());
  // Reset recovers.
  driver_->Write32(MmioDriver::kStatus, 0);
  EXPECT_EQ(driver_->Read32(MmioDriver::kStatus), 0u);
}

TEST_F(MmioTransportTest, QueueOutsideRamAtDriverOkNeedsReset) {
  ASSERT_TRUE(driver_->Negotiate(kFeatureVersion1));
  driver_->SetUpQueue(0, *vq0_);
  driver_->Write32(MmioDriver::kQueueSel, 0);
  driver_->Write32(MmioDriver::kQueueReady, 0);
  driver_->Write32(MmioDriver::kQueueDeviceLow, 0);
  driver_->Write32(MmioDriver::kQueueDeviceHigh, 0x10);  // 64 GiB
  driver_->Write32(MmioDriver::kQueueReady, 1);
  driver_->DriverOk();
  EXPECT_NE(driver_->Read32(MmioDriver::kStatus) & MmioDriver::kNeedsReset,
            0u);
  EXPECT_EQ(activations(), 0);
}

TEST_F(MmioTransportTest, FailedActivationNeedsReset) {
  {
    absl::MutexLock lock(&log_->mu);
    log_->fail_activation = true;
  }
  ASSERT_TRUE(driver_->Negotiate(kFeatureVersion1));
  driver_->SetUpQueue(0, *vq0_);
  driver_->DriverOk();
  EXPECT_NE(driver_->Read32(MmioDriver::kStatus) & MmioDriver::kNeedsReset,
            0u);
}

TEST_F(MmioTransportTest, BrokenRingProtocolNeedsReset) {
  Initialize();
  vq0_->SetAvailIdx(100);  // 100 entries in a 16-entry ring
  driver_->Write32(MmioDriver::kQueueNotify, 0);
  EXPECT_NE(driver_->Read32(MmioDriver::kStatus) & MmioDriver::kNeedsReset,
            0u);
  EXPECT_EQ(driver_->Read32(MmioDriver::kInterruptStatus),
            Interrupt::kConfigChange);
  // The driver writing back the status it read (with NEEDS_RESET) is not
  // an error, and does not clear the bit.
  driver_->Write32(MmioDriver::kStatus, driver_->Read32(MmioDriver::kStatus));
  EXPECT_EQ(driver_->Read32(MmioDriver::kStatus),
            0xfu | MmioDriver::kNeedsReset);
}

TEST_F(MmioTransportTest, ConcurrentKicksProcessEveryChainOnce) {
  Initialize();
  std::vector<uint16_t> heads;
  for (int i = 0; i < 16; ++i) {
    heads.push_back(vq0_->Post({{kData + 0x10u * i, 4, true}}));
  }
  // vCPU threads writing QueueNotify and reading registers while the event
  // loop's thread calls NotifyQueue.
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        if (t == 0) {
          transport_->NotifyQueue(0);
        } else {
          driver_->Write32(MmioDriver::kQueueNotify, 0);
          driver_->Read32(MmioDriver::kInterruptStatus);
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_EQ(vq0_->UsedIdx(), 16);
  std::multiset<uint32_t> used;
  for (uint16_t i = 0; i < 16; ++i) used.insert(vq0_->Used(i).id);
  EXPECT_EQ(used, std::multiset<uint32_t>(heads.begin(), heads.end()));
}

// A device offering a 100-entry queue, which a split virtqueue cannot be.
class BadQueueSizeDevice : public FakeDevice {
 public:
  BadQueueSizeDevice() : FakeDevice(std::make_shared<DeviceLog>()) {}
  std::span<const uint16_t> queue_max_sizes() const override { return kBad; }

 private:
  static constexpr std::array<uint16_t, 1> kBad = {100};
};

TEST(MmioTransportCreateTest, RefusesUnusableQueueSizes) {
  auto mem = GuestMemory::Create(kRamBytes);
  ASSERT_TRUE(mem.ok());
  auto irq = EventFd::Create();
  ASSERT_TRUE(irq.ok());
  EXPECT_EQ(MmioTransport::Create(**mem, std::make_unique<BadQueueSizeDevice>(),
                                  *std::move(irq))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sbx::vmm::virtio
