#include "vmm/snapshot/working_set.h"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "vmm/snapshot/format.h"

namespace sbx::vmm::snapshot {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kRam = 1 << 20;  // 256 pages

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "working_set_" + name + "_" +
         std::to_string(::getpid());
}

PageRun Pages(uint64_t first_page, uint64_t pages) {
  return {first_page * kPage, pages * kPage};
}

bool Covers(const std::vector<PageRun>& runs, uint64_t page) {
  for (const PageRun& r : runs) {
    if (page * kPage >= r.file_offset && page * kPage < r.file_offset + r.length) {
      return true;
    }
  }
  return false;
}

TEST(CoalescePagesTest, SortsMergesNeighboursAndDuplicates) {
  EXPECT_TRUE(CoalescePages({}).empty());
  EXPECT_THAT(CoalescePages({5}), ElementsAre(Pages(5, 1)));
  EXPECT_THAT(CoalescePages({9, 3, 4, 4, 5, 10, 20, 8}),
              ElementsAre(Pages(3, 3), Pages(8, 3), Pages(20, 1)));
  EXPECT_THAT(CoalescePages({0, 1, 2, 3}), ElementsAre(Pages(0, 4)));
}

TEST(ValidateRunsTest, RefusesWhatARestoreMustNotTouch) {
  EXPECT_TRUE(ValidateRuns({Pages(0, 2), Pages(4, 1), Pages(255, 1)}, kRam, "x").ok());
  EXPECT_TRUE(ValidateRuns({}, kRam, "x").ok());
  EXPECT_THAT(ValidateRuns({Pages(255, 2)}, kRam, "x").message(),
              HasSubstr("beyond guest RAM"));
  // offset + length overflows.
  EXPECT_THAT(ValidateRuns({{4096 * 1000000000ull, ~0ull - 4095}}, kRam, "x").message(),
              HasSubstr("beyond guest RAM"));
  EXPECT_THAT(ValidateRuns({{1ull << 62, 1ull << 62}}, kRam, "x").message(),
              HasSubstr("beyond guest RAM"));
  EXPECT_THAT(ValidateRuns({Pages(4, 2), Pages(5, 1)}, kRam, "x").message(),
              HasSubstr("overlaps"));
  EXPECT_THAT(ValidateRuns({Pages(4, 1), Pages(2, 1)}, kRam, "x").message(),
              HasSubstr("out of order"));
  EXPECT_THAT(ValidateRuns({{100, 4096}}, kRam, "x").message(),
              HasSubstr("not page-aligned"));
  EXPECT_THAT(ValidateRuns({Pages(3, 0)}, kRam, "x").message(), HasSubstr("empty"));
}

TEST(WorkingSetFileTest, RoundTrips) {
  WorkingSet set;
  set.snapshot_id = std::string("\x01\x02\x00\xff", 4);
  set.window_ms = 200;
  set.read = {Pages(0, 3), Pages(10, 1)};
  set.written = {Pages(5, 2)};
  const std::string path = TempPath("roundtrip");
  ASSERT_TRUE(WriteWorkingSet(path, set).ok());
  absl::StatusOr<WorkingSet> back = ReadWorkingSet(path, kRam);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->snapshot_id, set.snapshot_id);
  EXPECT_EQ(back->window_ms, 200u);
  EXPECT_EQ(back->read, set.read);
  EXPECT_EQ(back->written, set.written);
  EXPECT_EQ(back->pages(), 6u);
  ::unlink(path.c_str());
}

TEST(WorkingSetFileTest, RefusesCorruptForeignAndOutOfRangeFiles) {
  WorkingSet set;
  set.read = {Pages(250, 6)};
  const std::string path = TempPath("bad");
  ASSERT_TRUE(WriteWorkingSet(path, set).ok());
  // Fits 1 MiB of RAM, not 512 KiB.
  EXPECT_TRUE(ReadWorkingSet(path, kRam).ok());
  absl::StatusOr<WorkingSet> small = ReadWorkingSet(path, kRam / 2);
  EXPECT_EQ(small.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(small.status().message(), HasSubstr("beyond guest RAM"));

  // A flipped byte: CRC.
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  std::string corrupt = bytes;
  corrupt[kHeaderBytes] ^= 0x40;
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << corrupt;
  }
  absl::StatusOr<WorkingSet> bad = ReadWorkingSet(path, kRam);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(bad.status().message(), HasSubstr("workingset CRC mismatch"));
  EXPECT_THAT(bad.status().message(), HasSubstr(path));

  // Truncated.
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << bytes.substr(0, bytes.size() - 3);
  }
  EXPECT_THAT(ReadWorkingSet(path, kRam).status().message(), HasSubstr("truncated"));

  // A vmstate frame is not a working set, nor the other way round.
  const std::string payload = "x";
  std::vector<uint8_t> vmstate = EncodeFrame(
      std::span(reinterpret_cast<const uint8_t*>(payload.data()), 1));
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(vmstate.data()),
              static_cast<std::streamsize>(vmstate.size()));
  }
  EXPECT_THAT(ReadWorkingSet(path, kRam).status().message(),
              HasSubstr("not an sbx workingset file"));
  std::vector<uint8_t> ws = EncodeFrame(
      std::span(reinterpret_cast<const uint8_t*>(payload.data()), 1),
      kWorkingSetFrame);
  EXPECT_THAT(DecodeFrame(ws).status().message(), HasSubstr("not an sbx vmstate file"));
  EXPECT_TRUE(DecodeFrame(ws, kWorkingSetFrame).ok());

  // Another major version.
  ws[8] = 2;
  EXPECT_EQ(DecodeFrame(ws, kWorkingSetFrame).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ReadWorkingSet(TempPath("missing"), kRam).status().code(),
            absl::StatusCode::kNotFound);
  ::unlink(path.c_str());
}

// A memory file of kRam bytes, page i filled with byte i.
std::unique_ptr<GuestMemory> MapMemoryFile(const std::string& path) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    for (uint64_t page = 0; page < kRam / kPage; ++page) {
      out << std::string(kPage, static_cast<char>(page));
    }
  }
  auto mem = GuestMemory::CreateFromFile(
      UniqueFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC)), kRam);
  EXPECT_TRUE(mem.ok()) << mem.status();
  return mem.ok() ? *std::move(mem) : nullptr;
}

TEST(ResidentPagesTest, SeesReadAndWrittenPagesOfAPrivateMapping) {
  const std::string path = TempPath("memory");
  std::unique_ptr<GuestMemory> mem = MapMemoryFile(path);
  ASSERT_NE(mem, nullptr);
  absl::StatusOr<WorkingSet> before = ReadResidentPages(*mem);
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_EQ(before->pages(), 0u);

  EXPECT_EQ(*mem->ReadObj<uint8_t>(100 * kPage), 100);
  ASSERT_TRUE(mem->WriteObj<uint8_t>(200 * kPage + 5, 1).ok());
  absl::StatusOr<WorkingSet> after = ReadResidentPages(*mem);
  ASSERT_TRUE(after.ok()) << after.status();
  // The read page (and perhaps the kernel's fault-around neighbours).
  EXPECT_TRUE(Covers(after->read, 100));
  EXPECT_FALSE(Covers(after->read, 200));
  EXPECT_THAT(after->written, ElementsAre(Pages(200, 1)));
  EXPECT_TRUE(ValidateRuns(after->read, kRam, "read").ok());
  ::unlink(path.c_str());
}

TEST(PrefetchTest, MapsTheWorkingSetWithoutChangingIt) {
  const std::string path = TempPath("memory_prefetch");
  std::unique_ptr<GuestMemory> mem = MapMemoryFile(path);
  ASSERT_NE(mem, nullptr);
  WorkingSet set;
  set.read = {Pages(10, 3), Pages(40, 1)};
  set.written = {Pages(20, 2)};
  PrefetchStats stats = PrefetchWorkingSet(*mem, set);
  EXPECT_EQ(stats.pages, 6u);
  EXPECT_FALSE(stats.stopped);
  absl::StatusOr<WorkingSet> resident = ReadResidentPages(*mem);
  ASSERT_TRUE(resident.ok()) << resident.status();
  for (uint64_t page : {10, 11, 12, 40, 20, 21}) {
    EXPECT_TRUE(Covers(resident->read, page) || Covers(resident->written, page))
        << page;
  }
  if (stats.method == PrefetchMethod::kPopulate) {
    // Written pages were copied ahead of the guest's first write.
    EXPECT_THAT(resident->written, ElementsAre(Pages(20, 2)));
  }
  // Content unchanged.
  for (uint64_t page : {10, 20, 21, 40, 41}) {
    EXPECT_EQ(*mem->ReadObj<uint8_t>(page * kPage + 7), static_cast<uint8_t>(page));
  }

  // A stop flag already set: nothing is done.
  std::unique_ptr<GuestMemory> fresh = MapMemoryFile(path);
  std::atomic<bool> stop{true};
  stats = PrefetchWorkingSet(*fresh, set, &stop);
  EXPECT_TRUE(stats.stopped);
  EXPECT_EQ(stats.pages, 0u);
  ::unlink(path.c_str());
}

}  // namespace
}  // namespace sbx::vmm::snapshot
