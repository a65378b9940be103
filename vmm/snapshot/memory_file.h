#ifndef SBX_VMM_SNAPSHOT_MEMORY_FILE_H_
#define SBX_VMM_SNAPSHOT_MEMORY_FILE_H_

#include <cstdint>
#include <string>

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

}  // namespace sbx::vmm::snapshot

#endif  // SBX_VMM_SNAPSHOT_MEMORY_FILE_H_
