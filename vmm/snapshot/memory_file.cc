#include "vmm/snapshot/memory_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "base/status_macros.h"
#include "base/unique_fd.h"
#include "vmm/snapshot/format.h"

namespace sbx::vmm::snapshot {
namespace {

constexpr uint64_t kPage = 4096;

bool IsZeroPage(const uint8_t* page) {
  const auto* words = reinterpret_cast<const uint64_t*>(page);
  uint64_t any = 0;
  for (size_t i = 0; i < kPage / sizeof(uint64_t); ++i) any |= words[i];
  return any == 0;
}

absl::Status PwriteAll(int fd, const uint8_t* data, uint64_t len,
                       uint64_t offset, const std::string& path) {
  while (len > 0) {
    ssize_t n = ::pwrite(fd, data, std::min<uint64_t>(len, 1 << 30),
                         static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus("pwrite", path, errno);
    data += n;
    len -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

// Writes the non-zero pages of [begin, end) (file offsets inside `region`).
absl::Status WriteRange(int out, const MemoryRegion& region, uint64_t begin,
                        uint64_t end, const std::string& path,
                        MemoryFileStats& stats) {
  uint64_t run = begin;  // start of the current run of non-zero pages
  for (uint64_t off = begin; off <= end; off += kPage) {
    const bool zero =
        off == end || IsZeroPage(region.host + (off - region.file_offset));
    if (!zero) continue;
    if (off > run) {
      SBX_RETURN_IF_ERROR(PwriteAll(out, region.host + (run - region.file_offset),
                                    off - run, run, path));
      stats.data_bytes += off - run;
    }
    run = off + kPage;
  }
  return absl::OkStatus();
}

// A RAM-sized file at `tmp`, all hole until written.
absl::StatusOr<UniqueFd> CreateSparseFile(const std::string& tmp, uint64_t size) {
  UniqueFd out(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!out.valid()) return ErrnoStatus("open", tmp, errno);
  if (::ftruncate(out.get(), static_cast<off_t>(size)) != 0) {
    return ErrnoStatus("ftruncate", tmp, errno);
  }
  return out;
}

// Makes the finished `tmp` the file at `path`: fsync, rename, and the
// directory synced, so a crash leaves the old file or the whole new one.
absl::Status CommitFile(UniqueFd out, const std::string& tmp,
                        const std::string& path) {
  if (::fsync(out.get()) != 0) return ErrnoStatus("fsync", tmp, errno);
  out.reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return ErrnoStatus("rename", tmp, errno);
  }
  return SyncParentDirectory(path);
}

}  // namespace

absl::StatusOr<MemoryFileStats> WriteMemoryFile(const GuestMemory& memory,
                                                const std::string& path) {
  const std::string tmp = absl::StrCat(path, ".tmp");
  SBX_ASSIGN_OR_RETURN(UniqueFd out, CreateSparseFile(tmp, memory.ram_bytes()));
  MemoryFileStats stats;
  stats.file_bytes = memory.ram_bytes();
  for (const MemoryRegion& region : memory.regions()) {
    const uint64_t region_end = region.file_offset + region.size;
    if (memory.private_mapping()) {
      SBX_RETURN_IF_ERROR(WriteRange(out.get(), region, region.file_offset,
                                     region_end, tmp, stats));
      continue;
    }
    // A memfd (tmpfs) reports the pages never written as holes.
    uint64_t off = region.file_offset;
    while (off < region_end) {
      off_t data = ::lseek(memory.fd(), static_cast<off_t>(off), SEEK_DATA);
      if (data < 0 && errno == ENXIO) break;  // nothing more
      if (data < 0) return ErrnoStatus("lseek SEEK_DATA", "guest RAM", errno);
      if (static_cast<uint64_t>(data) >= region_end) break;
      off_t hole = ::lseek(memory.fd(), data, SEEK_HOLE);
      if (hole < 0) return ErrnoStatus("lseek SEEK_HOLE", "guest RAM", errno);
      // Page-align outward: tmpfs reports whole pages, this is cheap safety.
      const uint64_t begin = static_cast<uint64_t>(data) & ~(kPage - 1);
      const uint64_t end = std::min<uint64_t>(
          (static_cast<uint64_t>(hole) + kPage - 1) & ~(kPage - 1), region_end);
      SBX_RETURN_IF_ERROR(WriteRange(out.get(), region, begin, end, tmp, stats));
      off = end;
    }
  }
  SBX_RETURN_IF_ERROR(CommitFile(std::move(out), tmp, path));
  return stats;
}

std::vector<PageRun> BitmapToRuns(const std::vector<uint64_t>& bitmap,
                                  uint64_t pages) {
  std::vector<PageRun> runs;
  pages = std::min<uint64_t>(pages, uint64_t{bitmap.size()} * 64);
  uint64_t page = 0;
  while (page < pages) {
    const uint64_t word = bitmap[page / 64] >> (page % 64);
    if (word == 0) {  // skip the rest of this word
      page = (page / 64 + 1) * 64;
      continue;
    }
    page += static_cast<uint64_t>(__builtin_ctzll(word));
    if (page >= pages) break;
    const uint64_t first = page;
    while (page < pages && (bitmap[page / 64] >> (page % 64) & 1) != 0) ++page;
    if (!runs.empty() && runs.back().file_offset + runs.back().length == first * kPage) {
      runs.back().length += (page - first) * kPage;
    } else {
      runs.push_back({first * kPage, (page - first) * kPage});
    }
  }
  return runs;
}

absl::StatusOr<MemoryFileStats> WriteMemoryDiffFile(
    const GuestMemory& memory, const std::string& path,
    const std::vector<PageRun>& runs) {
  const std::string tmp = absl::StrCat(path, ".tmp");
  SBX_ASSIGN_OR_RETURN(UniqueFd out, CreateSparseFile(tmp, memory.ram_bytes()));
  MemoryFileStats stats;
  stats.file_bytes = memory.ram_bytes();
  for (const PageRun& run : runs) {
    // A run may cross from one region into the next (they are adjacent in
    // the file): write it region by region.
    for (const MemoryRegion& region : memory.regions()) {
      const uint64_t begin = std::max(run.file_offset, region.file_offset);
      const uint64_t end = std::min(run.file_offset + run.length,
                                    region.file_offset + region.size);
      if (begin >= end) continue;
      SBX_RETURN_IF_ERROR(WriteRange(out.get(), region, begin, end, tmp, stats));
    }
  }
  SBX_RETURN_IF_ERROR(CommitFile(std::move(out), tmp, path));
  return stats;
}

absl::Status ApplyMemoryDiff(GuestMemory& memory, const std::string& path,
                             const std::vector<PageRun>& runs) {
  UniqueFd in(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in.valid()) return ErrnoStatus("open", path, errno);
  struct stat st;
  if (::fstat(in.get(), &st) != 0) return ErrnoStatus("fstat", path, errno);
  if (static_cast<uint64_t>(st.st_size) != memory.ram_bytes()) {
    return absl::DataLossError(absl::StrCat(
        path, ": ", st.st_size, " bytes, the snapshot's guest RAM is ",
        memory.ram_bytes()));
  }
  uint64_t next = 0;  // runs must ascend without overlap
  for (const PageRun& run : runs) {
    uint64_t end;
    if (run.file_offset % kPage != 0 || run.length % kPage != 0 ||
        run.length == 0 || run.file_offset < next ||
        __builtin_add_overflow(run.file_offset, run.length, &end) ||
        end > memory.ram_bytes()) {
      return absl::DataLossError(absl::StrCat(
          path, ": bad diff page range [", run.file_offset, ", +", run.length,
          ")"));
    }
    next = end;
    SBX_ASSIGN_OR_RETURN(std::span<uint8_t> dst,
                         memory.FileRange(run.file_offset, run.length));
    size_t done = 0;
    while (done < dst.size()) {
      ssize_t n = ::pread(in.get(), dst.data() + done, dst.size() - done,
                          static_cast<off_t>(run.file_offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoStatus("pread", path, errno);
      if (n == 0) return absl::DataLossError(absl::StrCat(path, ": truncated"));
      done += static_cast<size_t>(n);
    }
  }
  return absl::OkStatus();
}

}  // namespace sbx::vmm::snapshot
