#include "vmm/memory/guest_memory.h"

#include <array>
#include <cstdint>
#include <limits>

#include <unistd.h>

#include "gtest/gtest.h"

namespace sbx::vmm {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

TEST(GuestMemoryTest, RejectsBadSizes) {
  EXPECT_EQ(GuestMemory::Create(0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GuestMemory::Create(4096 + 1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(GuestMemoryTest, SmallRamIsOneRegionAtZero) {
  auto mem = GuestMemory::Create(64 * kMiB);
  ASSERT_TRUE(mem.ok()) << mem.status();
  ASSERT_EQ((*mem)->regions().size(), 1u);
  EXPECT_EQ((*mem)->regions()[0].guest_base, 0u);
  EXPECT_EQ((*mem)->regions()[0].size, 64 * kMiB);
}

TEST(GuestMemoryTest, LargeRamSkipsTheMmioHole) {
  // 4 GiB of RAM: 3 GiB below the hole, 1 GiB from 4 GiB. MAP_NORESERVE
  // makes this cheap.
  auto mem = GuestMemory::Create(4 * kGiB);
  ASSERT_TRUE(mem.ok()) << mem.status();
  const auto& regions = (*mem)->regions();
  ASSERT_EQ(regions.size(), 2u);
  EXPECT_EQ(regions[0].guest_base, 0u);
  EXPECT_EQ(regions[0].size, kMmioHoleStart);
  EXPECT_EQ(regions[1].guest_base, kMmioHoleEnd);
  EXPECT_EQ(regions[1].size, 4 * kGiB - kMmioHoleStart);
  EXPECT_EQ(regions[1].file_offset, kMmioHoleStart);

  // The hole itself is not memory.
  EXPECT_FALSE((*mem)->Contains(kMmioHoleStart, 1));
  EXPECT_FALSE((*mem)->Contains(0xfee0'0000, 4));
  // A range straddling the start of the hole is refused.
  EXPECT_FALSE((*mem)->Contains(kMmioHoleStart - 2, 4));
  EXPECT_TRUE((*mem)->Contains(kMmioHoleEnd, 4096));
  // Writes above the hole land at the right file offset.
  ASSERT_TRUE((*mem)->WriteObj<uint32_t>(kMmioHoleEnd, 0xfeedbeef).ok());
  EXPECT_EQ(*reinterpret_cast<uint32_t*>(regions[0].host + kMmioHoleStart),
            0xfeedbeefu);
}

TEST(GuestMemoryTest, ReadBackWhatWasWritten) {
  auto mem = GuestMemory::Create(1 * kMiB);
  ASSERT_TRUE(mem.ok());
  std::array<uint8_t, 5> data = {1, 2, 3, 4, 5};
  ASSERT_TRUE((*mem)->Write(0x1001, data).ok());
  std::array<uint8_t, 5> out{};
  ASSERT_TRUE((*mem)->Read(0x1001, out).ok());
  EXPECT_EQ(out, data);
  EXPECT_EQ(*(*mem)->ReadObj<uint16_t>(0x1002), 0x0302);  // unaligned
}

TEST(GuestMemoryTest, RefusesAccessesOutsideRam) {
  auto mem = GuestMemory::Create(1 * kMiB);
  ASSERT_TRUE(mem.ok());
  GuestMemory& m = **mem;
  std::array<uint8_t, 8> buf{};
  // Entirely past the end, straddling the end, and wrapping around 2^64.
  EXPECT_EQ(m.Read(kMiB, buf).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(m.Write(kMiB - 4, buf).code(), absl::StatusCode::kOutOfRange);
  EXPECT_FALSE(m.Slice(std::numeric_limits<uint64_t>::max() - 3, 8).ok());
  EXPECT_FALSE(m.Slice(8, std::numeric_limits<uint64_t>::max()).ok());
  // The last bytes and an empty range at the very end are fine.
  EXPECT_TRUE(m.Read(kMiB - 8, buf).ok());
  EXPECT_TRUE(m.Slice(kMiB, 0).ok());
}

TEST(GuestMemoryTest, E820ReservesTheLegacyAreaAndSkipsTheHole) {
  auto mem = GuestMemory::Create(4 * kGiB);
  ASSERT_TRUE(mem.ok());
  std::vector<E820Entry> map = (*mem)->E820Map();
  ASSERT_EQ(map.size(), 4u);
  EXPECT_EQ(map[0].addr, 0u);
  EXPECT_EQ(map[0].size, kEbdaStart);
  EXPECT_EQ(map[0].type, E820Entry::kRam);
  EXPECT_EQ(map[1].addr, kEbdaStart);
  EXPECT_EQ(map[1].type, E820Entry::kReserved);
  EXPECT_EQ(map[2].addr, kHighMemoryStart);
  EXPECT_EQ(map[2].addr + map[2].size, kMmioHoleStart);
  EXPECT_EQ(map[3].addr, kMmioHoleEnd);
  EXPECT_EQ(map[3].size, 4 * kGiB - kMmioHoleStart);
  uint64_t usable = 0;
  for (const E820Entry& e : map) {
    if (e.type == E820Entry::kRam) usable += e.size;
  }
  // Everything but the legacy hole is usable.
  EXPECT_EQ(usable, 4 * kGiB - (kHighMemoryStart - kEbdaStart));
}

TEST(GuestMemoryTest, MemoryIsSharedThroughItsFile) {
  auto mem = GuestMemory::Create(1 * kMiB);
  ASSERT_TRUE(mem.ok());
  ASSERT_TRUE((*mem)->WriteObj<uint64_t>(0x2000, 0x1122334455667788).ok());
  uint64_t from_file = 0;
  ASSERT_EQ(::pread((*mem)->fd(), &from_file, sizeof(from_file), 0x2000),
            static_cast<ssize_t>(sizeof(from_file)));
  EXPECT_EQ(from_file, 0x1122334455667788u);
}

}  // namespace
}  // namespace sbx::vmm
