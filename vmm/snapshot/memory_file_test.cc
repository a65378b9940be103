#include "vmm/snapshot/memory_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sbx::vmm::snapshot {
namespace {

constexpr uint64_t kRam = 16 << 20;

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + name + "_" + std::to_string(::getpid());
}

TEST(MemoryFileTest, WritesOnlyNonZeroPagesAndRestoresThemPrivately) {
  auto mem = GuestMemory::Create(kRam);
  ASSERT_TRUE(mem.ok()) << mem.status();
  const std::string hello = "hello, snapshot";
  ASSERT_TRUE((*mem)->Write(0x1000, std::span(reinterpret_cast<const uint8_t*>(hello.data()), hello.size())).ok());
  ASSERT_TRUE((*mem)->WriteObj<uint64_t>(kRam - 8, 0x1122334455667788).ok());
  // A page written with zeros is data to tmpfs but stays a hole.
  ASSERT_TRUE((*mem)->WriteObj<uint64_t>(0x5000, 0).ok());

  const std::string path = TempPath("memory");
  absl::StatusOr<MemoryFileStats> stats = WriteMemoryFile(**mem, path);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->file_bytes, kRam);
  EXPECT_EQ(stats->data_bytes, 2u * 4096);
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), kRam);
  EXPECT_LE(static_cast<uint64_t>(st.st_blocks) * 512, 64u * 1024);  // sparse

  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  auto restored = GuestMemory::CreateFromFile(std::move(fd), kRam);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_TRUE((*restored)->private_mapping());
  std::string back(hello.size(), '\0');
  ASSERT_TRUE((*restored)->Read(0x1000, std::span(reinterpret_cast<uint8_t*>(back.data()), back.size())).ok());
  EXPECT_EQ(back, hello);
  EXPECT_EQ(*(*restored)->ReadObj<uint64_t>(kRam - 8), 0x1122334455667788u);
  EXPECT_EQ(*(*restored)->ReadObj<uint64_t>(0x3000), 0u);

  // Writes to the restored RAM stay in this VM: the file keeps its bytes.
  const uint8_t zeros[16] = {};
  ASSERT_TRUE((*restored)->Write(0x1000, zeros).ok());
  auto again = GuestMemory::CreateFromFile(
      UniqueFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC)), kRam);
  ASSERT_TRUE(again.ok());
  EXPECT_NE(*(*again)->ReadObj<uint64_t>(0x1000), 0u);

  // A restored VM's RAM snapshots too (its private pages are read).
  ASSERT_TRUE((*restored)->WriteObj<uint64_t>(0x9000, 77).ok());
  const std::string path2 = TempPath("memory2");
  stats = WriteMemoryFile(**restored, path2);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->data_bytes, 2u * 4096);  // 0x1000 is zero now
  auto third = GuestMemory::CreateFromFile(
      UniqueFd(::open(path2.c_str(), O_RDONLY | O_CLOEXEC)), kRam);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(*(*third)->ReadObj<uint64_t>(0x9000), 77u);
  EXPECT_EQ(*(*third)->ReadObj<uint64_t>(kRam - 8), 0x1122334455667788u);
  ::unlink(path.c_str());
  ::unlink(path2.c_str());
}

TEST(MemoryFileTest, AMemoryFileOfTheWrongSizeIsRefused) {
  const std::string path = TempPath("memory_short");
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  ASSERT_EQ(::ftruncate(fd.get(), 4096), 0);
  auto mem = GuestMemory::CreateFromFile(std::move(fd), kRam);
  EXPECT_EQ(mem.status().code(), absl::StatusCode::kInvalidArgument);
  ::unlink(path.c_str());
}

TEST(MemoryFileTest, BitmapRunsCoalesceAcrossWords) {
  std::vector<uint64_t> bitmap(3, 0);
  bitmap[0] = uint64_t{1} << 63 | 0b101;  // pages 0, 2 and 63 ...
  bitmap[1] = 0b11;                       // ... 64, 65 (one run with 63)
  bitmap[2] = uint64_t{1} << 10;          // 138, past `pages`: dropped
  std::vector<PageRun> runs = BitmapToRuns(bitmap, 130);
  ASSERT_EQ(runs.size(), 3u);
  EXPECT_EQ(runs[0].file_offset, 0u);
  EXPECT_EQ(runs[0].length, 4096u);
  EXPECT_EQ(runs[1].file_offset, 2u * 4096);
  EXPECT_EQ(runs[2].file_offset, 63u * 4096);
  EXPECT_EQ(runs[2].length, 3u * 4096);
}

// The VMM's own writes are tracked; a diff file holds the tracked pages
// and, applied over the base, gives the current RAM back, zeroed pages
// included.
TEST(MemoryFileTest, DiffOverBaseGivesTheCurrentRam) {
  auto mem = GuestMemory::Create(kRam);
  ASSERT_TRUE(mem.ok()) << mem.status();
  ASSERT_TRUE((*mem)->WriteObj<uint64_t>(0x3000, 0xaaaa).ok());
  ASSERT_TRUE((*mem)->WriteObj<uint64_t>(0x9000, 0xbbbb).ok());
  const std::string base = TempPath("diff_base");
  ASSERT_TRUE(WriteMemoryFile(**mem, base).ok());

  (*mem)->StartDirtyTracking();
  ASSERT_TRUE((*mem)->WriteObj<uint64_t>(0x3000, 0).ok());       // zeroed
  ASSERT_TRUE((*mem)->WriteObj<uint64_t>(0x7ffc, 0xcccc).ok());  // 2 pages
  std::vector<uint64_t> dirty(kRam / 4096 / 64, 0);
  (*mem)->CollectDirty(dirty);
  std::vector<PageRun> runs = BitmapToRuns(dirty, kRam / 4096);
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].file_offset, 0x3000u);
  EXPECT_EQ(runs[1].file_offset, 0x7000u);
  EXPECT_EQ(runs[1].length, 2u * 4096);
  const std::string diff = TempPath("diff");
  auto stats = WriteMemoryDiffFile(**mem, diff, runs);
  ASSERT_TRUE(stats.ok()) << stats.status();
  // Only page 7 holds non-zero bytes (0xcccc is little-endian); the zeroed
  // page 3 and page 8 (its upper, zero half) are holes.
  EXPECT_EQ(stats->data_bytes, 4096u);

  auto restored = GuestMemory::CreateFromFile(
      UniqueFd(::open(base.c_str(), O_RDONLY | O_CLOEXEC)), kRam);
  ASSERT_TRUE(restored.ok()) << restored.status();
  ASSERT_TRUE(ApplyMemoryDiff(**restored, diff, runs).ok());
  EXPECT_EQ(*(*restored)->ReadObj<uint64_t>(0x3000), 0u);
  EXPECT_EQ(*(*restored)->ReadObj<uint64_t>(0x7ffc), 0xccccu);
  EXPECT_EQ(*(*restored)->ReadObj<uint64_t>(0x9000), 0xbbbbu);

  // Ranges that are not page-aligned, overlap or leave RAM are refused.
  for (const std::vector<PageRun>& bad :
       {std::vector<PageRun>{{1, 4096}}, std::vector<PageRun>{{0, 8192}, {4096, 4096}},
        std::vector<PageRun>{{kRam - 4096, 8192}}}) {
    absl::Status s = ApplyMemoryDiff(**restored, diff, bad);
    EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  }
  ::unlink(base.c_str());
  ::unlink(diff.c_str());
}

}  // namespace
}  // namespace sbx::vmm::snapshot
