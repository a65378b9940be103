#ifndef SBX_VMM_SNAPSHOT_WORKING_SET_H_
#define SBX_VMM_SNAPSHOT_WORKING_SET_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "vmm/memory/guest_memory.h"
#include "vmm/snapshot/memory_file.h"

namespace sbx::vmm::snapshot {

// The working set of a template snapshot: which guest pages a VM restored
// from it touched in its first moments (read, or written: copied on write),
// as file-page ranges of the snapshot's `memory` file. Recorded once when a
// template is made (Machine::RecordWorkingSet), stored as `workingset`
// beside `vmstate` and `memory`, and pre-faulted by later restores
// (PrefetchWorkingSet), so their vCPUs do not stop on a host page fault for
// each page they touch first.
struct WorkingSet {
  std::string snapshot_id;  // VmState.snapshot_id of the snapshot
  uint64_t window_ms = 0;   // how long the recording ran
  std::vector<PageRun> read;
  std::vector<PageRun> written;

  uint64_t pages() const;
};

// Sorts `pages` (file page numbers, duplicates allowed) and merges them
// into runs of consecutive pages, as byte ranges.
std::vector<PageRun> CoalescePages(std::vector<uint64_t> pages);

// Checks that `runs` are page-aligned, non-empty, ascending, disjoint and
// inside [0, ram_bytes). kDataLoss naming `what` otherwise.
absl::Status ValidateRuns(const std::vector<PageRun>& runs, uint64_t ram_bytes,
                          const std::string& what);

// Which pages of `memory`'s mapping are present in this process's page
// tables now (/proc/self/pagemap, bit 63; bit 62, swapped, counts too):
// those the guest or the VMM touched since the mapping was made (plus the
// kernel's fault-around neighbours of a read fault). A present page that is
// no longer the file's (pagemap bit 61 clear: an anonymous copy-on-write
// copy) counts as written.
absl::StatusOr<WorkingSet> ReadResidentPages(const GuestMemory& memory);

// Writes `set` to `path` atomically (frame kWorkingSetFrame).
absl::Status WriteWorkingSet(const std::string& path, const WorkingSet& set);
// Reads and checks the working set file at `path`: its frame, its payload,
// and that every run lies inside `ram_bytes` of RAM and the read and
// written runs are each ascending and disjoint. Errors name `path`.
absl::StatusOr<WorkingSet> ReadWorkingSet(const std::string& path,
                                          uint64_t ram_bytes);

// How a working set is pre-faulted into a restored VM's private mapping.
enum class PrefetchMethod {
  kPopulate,   // MADV_POPULATE_READ / _WRITE (Linux 5.14+): mapped, and
               // written pages copied, without any fault later
  kTouch,      // MADV_WILLNEED and a read of every page (older kernels)
};

struct PrefetchStats {
  PrefetchMethod method = PrefetchMethod::kPopulate;
  uint64_t pages = 0;
  bool stopped = false;  // `stop` became true before the end
};

// Pre-faults `set` into `memory` (a MAP_PRIVATE snapshot mapping): read
// pages mapped from the page cache, written pages copied into this VM
// (their content unchanged: the guest would copy them on its first write).
// Checks `stop` between chunks, so a background prefetch can be ended.
// Safe while the guest runs: nothing is written through the mapping (the
// kTouch fallback only reads; it maps written pages read-only).
// REQUIRES: `set` validated against memory.ram_bytes().
PrefetchStats PrefetchWorkingSet(GuestMemory& memory, const WorkingSet& set,
                                 const std::atomic<bool>* stop = nullptr);

}  // namespace sbx::vmm::snapshot

#endif  // SBX_VMM_SNAPSHOT_WORKING_SET_H_
