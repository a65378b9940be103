#ifndef SBX_VMM_SNAPSHOT_MEMORY_FILE_H_
#define SBX_VMM_SNAPSHOT_MEMORY_FILE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "vmm/memory/guest_memory.h"

namespace sbx::vmm::snapshot {

struct MemoryFileStats {
  uint64_t file_bytes = 0;  // the file's size: guest RAM
  uint64_t data_bytes = 0;  // bytes written: the non-zero pages
};

// Writes guest RAM to `path` as the snapshot's `memory` file, atomically
// (a temporary file beside it, fsync, rename, fsync of the directory): the
// file is exactly ram_bytes long, byte i holding RAM at file offset i
// (MemoryRegion::file_offset), and is sparse: only pages with a non-zero
// byte are written, the rest are holes. Pages the guest never touched are
// not even read: for a memfd the holes come from lseek SEEK_DATA/SEEK_HOLE
// (a restored VM's private mapping has no such map, so all its pages are
// read). REQUIRES: the guest is paused.
absl::StatusOr<MemoryFileStats> WriteMemoryFile(const GuestMemory& memory,
                                                const std::string& path);

// A run of pages of the memory file: [file_offset, file_offset + length).
struct PageRun {
  uint64_t file_offset = 0;
  uint64_t length = 0;

  friend bool operator==(const PageRun&, const PageRun&) = default;
};

// The runs of set bits in `bitmap` (bit i: file page i), at most `pages`
// pages, as byte ranges.
std::vector<PageRun> BitmapToRuns(const std::vector<uint64_t>& bitmap,
                                  uint64_t pages);

// Writes a diff snapshot's `memory` file to `path` atomically: ram_bytes
// long like a full one, but only the pages in `runs` that hold a non-zero
// byte are written, all else is holes. The runs (not the holes) say which
// pages the diff holds: a page zeroed since the base is in a run and reads
// back as zero. REQUIRES: the guest is paused.
absl::StatusOr<MemoryFileStats> WriteMemoryDiffFile(
    const GuestMemory& memory, const std::string& path,
    const std::vector<PageRun>& runs);

// Copies `runs` of the diff memory file `path` over guest RAM (a base
// snapshot's private mapping). Errors (kDataLoss) for a file whose size is
// not guest RAM's, or runs that are unaligned, unordered or outside RAM.
// REQUIRES: the VM does not run yet.
absl::Status ApplyMemoryDiff(GuestMemory& memory, const std::string& path,
                             const std::vector<PageRun>& runs);

}  // namespace sbx::vmm::snapshot

#endif  // SBX_VMM_SNAPSHOT_MEMORY_FILE_H_
