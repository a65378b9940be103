#include "vmm/snapshot/working_set.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "base/status_macros.h"
#include "base/unique_fd.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "proto/vmstate.pb.h"
#include "vmm/snapshot/format.h"

// Older libc headers lack them (Linux 5.14, include/uapi/asm-generic/mman-common.h).
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

namespace sbx::vmm::snapshot {
namespace {

constexpr uint64_t kPage = 4096;
// Prefetch in chunks this big, checking `stop` between them.
constexpr uint64_t kChunk = 2 << 20;

// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
constexpr uint64_t kPresent = uint64_t{1} << 63;
constexpr uint64_t kSwapped = uint64_t{1} << 62;
constexpr uint64_t kFileOrShared = uint64_t{1} << 61;

uint8_t* MappingBase(const GuestMemory& memory) {
  const MemoryRegion& first = memory.regions().front();
  return first.host - first.file_offset;
}

void AddRuns(google::protobuf::RepeatedPtrField<sbx::vmstate::v1::PageRange>* out,
             const std::vector<PageRun>& runs) {
  for (const PageRun& run : runs) {
    sbx::vmstate::v1::PageRange* r = out->Add();
    r->set_file_offset(run.file_offset);
    r->set_length(run.length);
  }
}

std::vector<PageRun> Runs(
    const google::protobuf::RepeatedPtrField<sbx::vmstate::v1::PageRange>& in) {
  std::vector<PageRun> runs;
  runs.reserve(static_cast<size_t>(in.size()));
  for (const sbx::vmstate::v1::PageRange& r : in) {
    runs.push_back({r.file_offset(), r.length()});
  }
  return runs;
}

// One madvise over [addr, addr + len) in chunks; false if the kernel does
// not know `advice` (EINVAL on the first call).
bool Populate(uint8_t* addr, uint64_t len, int advice,
              const std::atomic<bool>* stop, bool* stopped) {
  for (uint64_t done = 0; done < len; done += kChunk) {
    if (stop != nullptr && stop->load(std::memory_order_relaxed)) {
      *stopped = true;
      return true;
    }
    const uint64_t n = std::min(kChunk, len - done);
    if (::madvise(addr + done, n, advice) != 0) {
      if (errno == EINVAL && done == 0) return false;
      // EFAULT/ENOMEM/EINTR: an optimisation only; the guest faults the
      // rest in itself.
    }
  }
  return true;
}

void Touch(uint8_t* addr, uint64_t len, const std::atomic<bool>* stop,
           bool* stopped) {
  (void)::madvise(addr, len, MADV_WILLNEED);
  for (uint64_t off = 0; off < len; off += kPage) {
    if (off % kChunk == 0 && stop != nullptr &&
        stop->load(std::memory_order_relaxed)) {
      *stopped = true;
      return;
    }
    (void)*reinterpret_cast<volatile const uint8_t*>(addr + off);
  }
}

}  // namespace

uint64_t WorkingSet::pages() const {
  uint64_t n = 0;
  for (const PageRun& r : read) n += r.length / kPage;
  for (const PageRun& r : written) n += r.length / kPage;
  return n;
}

std::vector<PageRun> CoalescePages(std::vector<uint64_t> pages) {
  std::sort(pages.begin(), pages.end());
  std::vector<PageRun> runs;
  for (size_t i = 0; i < pages.size();) {
    size_t j = i + 1;
    while (j < pages.size() && pages[j] <= pages[j - 1] + 1) ++j;
    runs.push_back({pages[i] * kPage, (pages[j - 1] - pages[i] + 1) * kPage});
    i = j;
  }
  return runs;
}

absl::Status ValidateRuns(const std::vector<PageRun>& runs, uint64_t ram_bytes,
                          const std::string& what) {
  uint64_t end = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    const PageRun& r = runs[i];
    if (r.length == 0 || r.file_offset % kPage != 0 || r.length % kPage != 0) {
      return absl::DataLossError(absl::StrCat(
          what, ": range ", i, " is empty or not page-aligned"));
    }
    if (i > 0 && r.file_offset < end) {
      return absl::DataLossError(absl::StrCat(
          what, ": range ", i, " is out of order or overlaps the one before"));
    }
    if (r.file_offset > ram_bytes || r.length > ram_bytes - r.file_offset) {
      return absl::DataLossError(absl::StrCat(
          what, ": range ", i, " ends beyond guest RAM (", ram_bytes, " bytes)"));
    }
    end = r.file_offset + r.length;
  }
  return absl::OkStatus();
}

absl::StatusOr<WorkingSet> ReadResidentPages(const GuestMemory& memory) {
  UniqueFd fd(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus("open", "/proc/self/pagemap", errno);
  const uint64_t pages = memory.ram_bytes() / kPage;
  const uint64_t first = reinterpret_cast<uintptr_t>(MappingBase(memory)) / kPage;
  std::vector<uint64_t> read;
  std::vector<uint64_t> written;
  std::vector<uint64_t> entries(4096);
  for (uint64_t page = 0; page < pages;) {
    const uint64_t n = std::min<uint64_t>(entries.size(), pages - page);
    ssize_t got = ::pread(fd.get(), entries.data(), n * 8,
                          static_cast<off_t>((first + page) * 8));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0 || got % 8 != 0) {
      return ErrnoStatus("pread", "/proc/self/pagemap", got < 0 ? errno : EIO);
    }
    const uint64_t count = static_cast<uint64_t>(got) / 8;
    for (uint64_t i = 0; i < count; ++i) {
      const uint64_t e = entries[i];
      if ((e & (kPresent | kSwapped)) == 0) continue;
      ((e & kFileOrShared) != 0 ? read : written).push_back(page + i);
    }
    page += count;
  }
  WorkingSet set;
  set.read = CoalescePages(std::move(read));
  set.written = CoalescePages(std::move(written));
  return set;
}

absl::Status WriteWorkingSet(const std::string& path, const WorkingSet& set) {
  sbx::vmstate::v1::WorkingSet proto;
  proto.set_snapshot_id(set.snapshot_id);
  proto.set_window_ms(set.window_ms);
  AddRuns(proto.mutable_read(), set.read);
  AddRuns(proto.mutable_written(), set.written);
  std::string payload;
  {
    google::protobuf::io::StringOutputStream stream(&payload);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    if (!proto.SerializeToCodedStream(&coded)) {
      return absl::InternalError("serializing the working set failed");
    }
  }
  if (payload.size() > kMaxPayloadBytes) {
    return absl::InternalError(absl::StrCat(
        "working set of ", payload.size(), " bytes is over the limit"));
  }
  std::vector<uint8_t> file = EncodeFrame(
      std::span(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()),
      kWorkingSetFrame);
  return WriteFileAtomically(path, file);
}

absl::StatusOr<WorkingSet> ReadWorkingSet(const std::string& path,
                                          uint64_t ram_bytes) {
  SBX_ASSIGN_OR_RETURN(std::vector<uint8_t> payload,
                       ReadFramedFile(path, kWorkingSetFrame));
  sbx::vmstate::v1::WorkingSet proto;
  if (!proto.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
    return absl::DataLossError(
        absl::StrCat(path, ": the payload is not a valid WorkingSet"));
  }
  WorkingSet set;
  set.snapshot_id = proto.snapshot_id();
  set.window_ms = proto.window_ms();
  set.read = Runs(proto.read());
  set.written = Runs(proto.written());
  SBX_RETURN_IF_ERROR(ValidateRuns(set.read, ram_bytes, absl::StrCat(path, " (read)")));
  SBX_RETURN_IF_ERROR(
      ValidateRuns(set.written, ram_bytes, absl::StrCat(path, " (written)")));
  return set;
}

PrefetchStats PrefetchWorkingSet(GuestMemory& memory, const WorkingSet& set,
                                 const std::atomic<bool>* stop) {
  PrefetchStats stats;
  uint8_t* base = MappingBase(memory);
  bool populate = true;
  // Written pages first: the guest's first instructions write its stack
  // and data, and a copy-on-write fault costs more than a read fault.
  for (const auto* runs : {&set.written, &set.read}) {
    const int advice = runs == &set.written ? MADV_POPULATE_WRITE : MADV_POPULATE_READ;
    for (const PageRun& run : *runs) {
      if (stats.stopped) return stats;
      uint8_t* addr = base + run.file_offset;
      if (populate && !Populate(addr, run.length, advice, stop, &stats.stopped)) {
        populate = false;  // kernel before 5.14
        stats.method = PrefetchMethod::kTouch;
      }
      if (!populate) Touch(addr, run.length, stop, &stats.stopped);
      if (!stats.stopped) stats.pages += run.length / kPage;
    }
  }
  return stats;
}

}  // namespace sbx::vmm::snapshot
