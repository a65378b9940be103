#include "vmm/devices/bus.h"

#include <array>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "gtest/gtest.h"

namespace sbx::vmm {
namespace {

// Records what it was asked to do; reads return the offset's low byte.
class RecordingDevice : public BusDevice {
 public:
  void Read(uint64_t offset, std::span<uint8_t> data) override {
    reads.push_back(offset);
    for (uint8_t& b : data) b = static_cast<uint8_t>(offset);
  }
  void Write(uint64_t offset, std::span<const uint8_t> data) override {
    writes.push_back({offset, data[0]});
  }
  std::vector<uint64_t> reads;
  std::vector<std::pair<uint64_t, uint8_t>> writes;
};

TEST(BusTest, DispatchesWithOffsetsRelativeToTheDevice) {
  Bus bus;
  auto a = std::make_shared<RecordingDevice>();
  auto b = std::make_shared<RecordingDevice>();
  ASSERT_TRUE(bus.Insert(0x3f8, 8, a).ok());
  ASSERT_TRUE(bus.Insert(0x1000, 0x100, b).ok());

  std::array<uint8_t, 1> byte{};
  EXPECT_TRUE(bus.Read(0x3fd, byte));
  EXPECT_EQ(byte[0], 5);
  std::array<uint8_t, 4> word = {7, 0, 0, 0};
  EXPECT_TRUE(bus.Write(0x10fc, word));
  ASSERT_EQ(b->writes.size(), 1u);
  EXPECT_EQ(b->writes[0].first, 0xfcu);
  EXPECT_EQ(b->writes[0].second, 7);
  EXPECT_TRUE(a->writes.empty());
}

TEST(BusTest, AccessesOutsideOrAcrossRangesAreNotDispatched) {
  Bus bus;
  auto dev = std::make_shared<RecordingDevice>();
  ASSERT_TRUE(bus.Insert(0x1000, 0x10, dev).ok());
  std::array<uint8_t, 4> buf{};
  EXPECT_FALSE(bus.Read(0xfff, std::span(buf).first(1)));   // just before
  EXPECT_FALSE(bus.Read(0x1010, std::span(buf).first(1)));  // just after
  EXPECT_FALSE(bus.Read(0x100e, buf));                      // straddles the end
  EXPECT_FALSE(bus.Write(std::numeric_limits<uint64_t>::max() - 1, buf));
  EXPECT_TRUE(dev->reads.empty());
  EXPECT_TRUE(dev->writes.empty());
  EXPECT_TRUE(bus.Read(0x100c, buf));                       // last 4 bytes
}

TEST(BusTest, RefusesOverlappingEmptyAndWrappingRanges) {
  Bus bus;
  auto dev = std::make_shared<RecordingDevice>();
  ASSERT_TRUE(bus.Insert(0x100, 0x100, dev).ok());
  EXPECT_EQ(bus.Insert(0x80, 0x81, dev).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(bus.Insert(0x1ff, 1, dev).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(bus.Insert(0x120, 4, dev).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(bus.Insert(0x300, 0, dev).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bus.Insert(std::numeric_limits<uint64_t>::max(), 2, dev).code(),
            absl::StatusCode::kInvalidArgument);
  // Adjacent ranges are fine.
  EXPECT_TRUE(bus.Insert(0x80, 0x80, dev).ok());
  EXPECT_TRUE(bus.Insert(0x200, 0x80, dev).ok());
}

}  // namespace
}  // namespace sbx::vmm
