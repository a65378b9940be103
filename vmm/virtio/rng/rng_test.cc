#include "vmm/virtio/rng/rng.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "gtest/gtest.h"
#include "vmm/virtio/mmio_transport.h"
#include "vmm/virtio/testing/fake_driver.h"

namespace sbx::vmm::virtio {
namespace {

using testing::FakeVirtqueue;
using testing::MmioDriver;

constexpr uint64_t kRamBytes = 1 << 20;
constexpr GuestAddress kBufA = 0x20000;
constexpr GuestAddress kBufB = 0x40000;
constexpr GuestAddress kBig = 0x60000;

class RngTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto mem = GuestMemory::Create(kRamBytes);
    ASSERT_TRUE(mem.ok()) << mem.status();
    mem_ = *std::move(mem);
    auto irq = EventFd::Create();
    ASSERT_TRUE(irq.ok()) << irq.status();
    auto transport = MmioTransport::Create(*mem_, std::make_unique<Rng>(),
                                           *std::move(irq));
    ASSERT_TRUE(transport.ok()) << transport.status();
    transport_ = *std::move(transport);
    driver_.emplace(*transport_);
    vq_.emplace(*mem_, 0x1000, Rng::kQueueSize);
    EXPECT_EQ(driver_->Read32(MmioDriver::kDeviceId), 4u);
    ASSERT_TRUE(driver_->Negotiate(kFeatureVersion1));
    driver_->SetUpQueue(0, *vq_);
    driver_->DriverOk();
    ASSERT_EQ(driver_->Read32(MmioDriver::kStatus), 0xfu);
  }

  std::vector<uint8_t> Bytes(GuestAddress addr, size_t len) {
    std::vector<uint8_t> v(len);
    EXPECT_TRUE(mem_->Read(addr, v).ok());
    return v;
  }

  std::unique_ptr<GuestMemory> mem_;
  std::unique_ptr<MmioTransport> transport_;
  std::optional<MmioDriver> driver_;
  std::optional<FakeVirtqueue> vq_;
};

TEST_F(RngTest, FillsWritableBuffersWithFreshRandomBytes) {
  vq_->Post({{kBufA, 64, true}});
  vq_->Post({{kBufB, 64, true}});
  driver_->Write32(MmioDriver::kQueueNotify, 0);
  ASSERT_EQ(vq_->UsedIdx(), 2);
  EXPECT_EQ(vq_->Used(0).len, 64u);
  EXPECT_EQ(vq_->Used(1).len, 64u);
  std::vector<uint8_t> a = Bytes(kBufA, 64);
  std::vector<uint8_t> b = Bytes(kBufB, 64);
  // Chance of either failing with a working getrandom: 2^-512.
  EXPECT_NE(a, std::vector<uint8_t>(64, 0));
  EXPECT_NE(a, b);
  // The bytes after the buffer were not touched.
  EXPECT_EQ(Bytes(kBufA + 64, 64), std::vector<uint8_t>(64, 0));

  EXPECT_GE(*transport_->interrupt().irq().Consume(), 1u);
  EXPECT_EQ(driver_->Read32(MmioDriver::kInterruptStatus),
            Interrupt::kUsedBuffer);
  driver_->Write32(MmioDriver::kInterruptAck, Interrupt::kUsedBuffer);
  EXPECT_EQ(driver_->Read32(MmioDriver::kInterruptStatus), 0u);
}

TEST_F(RngTest, SkipsReadableBuffersAndFillsEveryWritableOne) {
  vq_->Post({{kBufA, 32, false}, {kBufB, 16, true}, {kBufB + 0x100, 16, true}});
  transport_->NotifyQueue(0);
  ASSERT_EQ(vq_->UsedIdx(), 1);
  EXPECT_EQ(vq_->Used(0).len, 32u);
  EXPECT_EQ(Bytes(kBufA, 32), std::vector<uint8_t>(32, 0));
  EXPECT_NE(Bytes(kBufB, 16), std::vector<uint8_t>(16, 0));
  EXPECT_NE(Bytes(kBufB + 0x100, 16), std::vector<uint8_t>(16, 0));
}

TEST_F(RngTest, CapsEachRequest) {
  constexpr uint32_t kAsk = Rng::kMaxBytesPerRequest + 4096;
  vq_->Post({{kBig, kAsk, true}});
  driver_->Write32(MmioDriver::kQueueNotify, 0);
  ASSERT_EQ(vq_->UsedIdx(), 1);
  EXPECT_EQ(vq_->Used(0).len, Rng::kMaxBytesPerRequest);
  EXPECT_NE(Bytes(kBig + Rng::kMaxBytesPerRequest - 64, 64),
            std::vector<uint8_t>(64, 0));
  EXPECT_EQ(Bytes(kBig + Rng::kMaxBytesPerRequest, 4096),
            std::vector<uint8_t>(4096, 0));
}

}  // namespace
}  // namespace sbx::vmm::virtio
