#include "vmm/memory/guest_memory.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <utility>

#include "base/status.h"

namespace sbx::vmm {

absl::StatusOr<std::unique_ptr<GuestMemory>> GuestMemory::Create(
    uint64_t ram_bytes) {
  constexpr uint64_t kPage = 4096;
  // RAM above 4 GiB can extend to the 46-bit physical limit KVM guests
  // commonly have; far more than any host will grant.
  constexpr uint64_t kMaxRam = uint64_t{1} << 45;
  if (ram_bytes == 0 || ram_bytes % kPage != 0 || ram_bytes > kMaxRam) {
    return absl::InvalidArgumentError(
        "guest RAM must be a positive multiple of 4 KiB, at most 32 TiB; got " +
        std::to_string(ram_bytes) + " bytes");
  }
  UniqueFd fd(::memfd_create("sbx-guest-ram", MFD_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus("memfd_create", errno);
  if (::ftruncate(fd.get(), static_cast<off_t>(ram_bytes)) != 0) {
    return ErrnoStatus("ftruncate guest RAM", errno);
  }
  return Map(std::move(fd), ram_bytes, MAP_SHARED);
}

absl::StatusOr<std::unique_ptr<GuestMemory>> GuestMemory::CreateFromFile(
    UniqueFd fd, uint64_t ram_bytes) {
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus("fstat memory file", errno);
  if (ram_bytes == 0 || ram_bytes % 4096 != 0 ||
      static_cast<uint64_t>(st.st_size) != ram_bytes) {
    return absl::InvalidArgumentError(
        "the memory file is " + std::to_string(st.st_size) +
        " bytes, the snapshot's guest RAM " + std::to_string(ram_bytes));
  }
  return Map(std::move(fd), ram_bytes, MAP_PRIVATE);
}

absl::StatusOr<std::unique_ptr<GuestMemory>> GuestMemory::Map(
    UniqueFd fd, uint64_t ram_bytes, int flags) {
  // MAP_NORESERVE: the guest touches RAM lazily; untouched pages cost nothing.
  void* base = ::mmap(nullptr, ram_bytes, PROT_READ | PROT_WRITE,
                      flags | MAP_NORESERVE, fd.get(), 0);
  if (base == MAP_FAILED) return ErrnoStatus("mmap guest RAM", errno);
  auto* host = static_cast<uint8_t*>(base);

  std::vector<MemoryRegion> regions;
  uint64_t low = std::min(ram_bytes, kMmioHoleStart);
  regions.push_back({.guest_base = 0, .size = low, .host = host,
                     .file_offset = 0});
  if (ram_bytes > low) {
    regions.push_back({.guest_base = kMmioHoleEnd, .size = ram_bytes - low,
                       .host = host + low, .file_offset = low});
  }
  return std::unique_ptr<GuestMemory>(
      new GuestMemory(std::move(fd), host, ram_bytes, std::move(regions),
                      (flags & MAP_PRIVATE) != 0));
}

GuestMemory::GuestMemory(UniqueFd fd, uint8_t* base, uint64_t ram_bytes,
                         std::vector<MemoryRegion> regions,
                         bool private_mapping)
    : fd_(std::move(fd)),
      base_(base),
      ram_bytes_(ram_bytes),
      regions_(std::move(regions)),
      private_mapping_(private_mapping) {}

GuestMemory::~GuestMemory() { ::munmap(base_, ram_bytes_); }

std::vector<E820Entry> GuestMemory::E820Map() const {
  std::vector<E820Entry> map;
  const MemoryRegion& low = regions_[0];
  if (low.size <= kEbdaStart) {
    map.push_back({0, low.size, E820Entry::kRam});
  } else {
    map.push_back({0, kEbdaStart, E820Entry::kRam});
    map.push_back({kEbdaStart, kHighMemoryStart - kEbdaStart,
                   E820Entry::kReserved});
    if (low.size > kHighMemoryStart) {
      map.push_back({kHighMemoryStart, low.size - kHighMemoryStart,
                     E820Entry::kRam});
    }
  }
  for (size_t i = 1; i < regions_.size(); ++i) {
    map.push_back({regions_[i].guest_base, regions_[i].size, E820Entry::kRam});
  }
  return map;
}

const MemoryRegion* GuestMemory::Find(GuestAddress addr, uint64_t len) const {
  uint64_t end;
  if (__builtin_add_overflow(addr, len, &end)) return nullptr;
  for (const MemoryRegion& r : regions_) {
    if (addr >= r.guest_base && end <= r.end()) return &r;
  }
  return nullptr;
}

bool GuestMemory::Contains(GuestAddress addr, uint64_t len) const {
  return Find(addr, len) != nullptr;
}

namespace {
absl::Status OutOfRange(GuestAddress addr, uint64_t len) {
  char buf[96];
  std::snprintf(buf, sizeof(buf),
                "guest range [0x%llx, +0x%llx) is not inside guest RAM",
                static_cast<unsigned long long>(addr),
                static_cast<unsigned long long>(len));
  return absl::OutOfRangeError(buf);
}
}  // namespace

absl::StatusOr<std::span<uint8_t>> GuestMemory::Slice(GuestAddress addr,
                                                      uint64_t len) {
  const MemoryRegion* r = Find(addr, len);
  if (r == nullptr) return OutOfRange(addr, len);
  MarkDirty(r->file_offset + (addr - r->guest_base), len);
  return std::span<uint8_t>(r->host + (addr - r->guest_base), len);
}

absl::StatusOr<std::span<const uint8_t>> GuestMemory::Slice(
    GuestAddress addr, uint64_t len) const {
  const MemoryRegion* r = Find(addr, len);
  if (r == nullptr) return OutOfRange(addr, len);
  return std::span<const uint8_t>(r->host + (addr - r->guest_base), len);
}

absl::Status GuestMemory::Read(GuestAddress addr,
                               std::span<uint8_t> out) const {
  absl::StatusOr<std::span<const uint8_t>> src = Slice(addr, out.size());
  if (!src.ok()) return src.status();
  std::memcpy(out.data(), src->data(), out.size());
  return absl::OkStatus();
}

absl::StatusOr<std::span<uint8_t>> GuestMemory::FileRange(uint64_t file_offset,
                                                          uint64_t len) {
  uint64_t end;
  if (__builtin_add_overflow(file_offset, len, &end) || end > ram_bytes_) {
    return absl::OutOfRangeError(
        "file range [" + std::to_string(file_offset) + ", +" +
        std::to_string(len) + ") is not inside guest RAM");
  }
  return std::span<uint8_t>(base_ + file_offset, len);
}

void GuestMemory::StartDirtyTracking() {
  if (tracking_.load(std::memory_order_acquire)) return;
  dirty_words_ = (ram_bytes_ / 4096 + 63) / 64;
  dirty_.reset(new std::atomic<uint64_t>[dirty_words_]);
  for (size_t i = 0; i < dirty_words_; ++i) dirty_[i].store(0);
  tracking_.store(true, std::memory_order_release);
}

void GuestMemory::MarkDirty(uint64_t file_offset, uint64_t len) {
  if (!tracking_.load(std::memory_order_acquire) || len == 0) return;
  const uint64_t first = file_offset / 4096;
  const uint64_t last = (file_offset + len - 1) / 4096;
  for (uint64_t page = first; page <= last; ++page) {
    dirty_[page / 64].fetch_or(uint64_t{1} << (page % 64),
                               std::memory_order_relaxed);
  }
}

void GuestMemory::CollectDirty(std::vector<uint64_t>& bitmap) {
  if (!tracking_.load(std::memory_order_acquire)) return;
  for (size_t i = 0; i < dirty_words_ && i < bitmap.size(); ++i) {
    bitmap[i] |= dirty_[i].exchange(0, std::memory_order_relaxed);
  }
}

absl::Status GuestMemory::Write(GuestAddress addr,
                                std::span<const uint8_t> data) {
  absl::StatusOr<std::span<uint8_t>> dst = Slice(addr, data.size());
  if (!dst.ok()) return dst.status();
  std::memcpy(dst->data(), data.data(), data.size());
  return absl::OkStatus();
}

}  // namespace sbx::vmm
