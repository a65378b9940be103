#ifndef SBX_VMM_MEMORY_GUEST_MEMORY_H_
#define SBX_VMM_MEMORY_GUEST_MEMORY_H_

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/unique_fd.h"

namespace sbx::vmm {

using GuestAddress = uint64_t;

// x86 guest-physical layout. RAM starts at 0; the 1 GiB below 4 GiB is a hole
// for MMIO (virtio-mmio devices, IOAPIC at 0xfec00000, LAPIC at 0xfee00000);
// RAM beyond 3 GiB continues at 4 GiB.
inline constexpr GuestAddress kMmioHoleStart = 0xc000'0000;
inline constexpr GuestAddress kMmioHoleEnd = 0x1'0000'0000;
// Legacy areas inside the first MiB that the e820 map reports as reserved:
// the EBDA and BIOS area from 0x9fc00 to 1 MiB.
inline constexpr GuestAddress kEbdaStart = 0x9fc00;
inline constexpr GuestAddress kHighMemoryStart = 0x10'0000;  // 1 MiB

// One contiguous run of guest RAM and where it lives in the host.
struct MemoryRegion {
  GuestAddress guest_base = 0;
  uint64_t size = 0;
  uint8_t* host = nullptr;   // host address of guest_base
  uint64_t file_offset = 0;  // offset of guest_base in the backing file

  GuestAddress end() const { return guest_base + size; }
};

// An e820 map entry (Linux boot protocol, ACPI 6.x §15 address range types).
struct E820Entry {
  enum Type : uint32_t { kRam = 1, kReserved = 2 };
  GuestAddress addr;
  uint64_t size;
  Type type;
};

// Guest RAM: one file (a memfd for a booted VM, a snapshot's memory file for
// a restored one) mapped once into the VMM and cut into regions around the
// MMIO hole. Every access from the VMM goes through the checked accessors
// below, which refuse any range that is not entirely inside one region, so
// a guest-supplied address or length can never make the VMM touch memory
// outside guest RAM.
//
// Thread-compatible: the accessors may be called from any thread, and the
// guest's vCPUs write the same memory concurrently. Whoever needs ordering
// against the guest (virtqueue indices) adds the fences the spec asks for.
class GuestMemory {
 public:
  // Creates `ram_bytes` of zeroed RAM backed by a new memfd. `ram_bytes`
  // must be a positive multiple of 4 KiB.
  static absl::StatusOr<std::unique_ptr<GuestMemory>> Create(uint64_t ram_bytes);

  // Guest RAM from a snapshot's memory file `fd` (exactly `ram_bytes`
  // long), mapped MAP_PRIVATE: every VM restored from one file shares its
  // clean pages through the page cache, and a guest write copies the page
  // into this VM alone. The file itself is never written. Fails with
  // kInvalidArgument if the file's size is not `ram_bytes`.
  static absl::StatusOr<std::unique_ptr<GuestMemory>> CreateFromFile(
      UniqueFd fd, uint64_t ram_bytes);

  ~GuestMemory();
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;

  uint64_t ram_bytes() const { return ram_bytes_; }
  const std::vector<MemoryRegion>& regions() const { return regions_; }
  // The file behind guest RAM (for snapshots).
  int fd() const { return fd_.get(); }
  // True when guest RAM is a private (copy-on-write) mapping of fd(): then
  // fd() does not hold what the guest wrote, only the mapping does.
  bool private_mapping() const { return private_mapping_; }

  // The e820 map a guest is given: usable RAM, the reserved legacy area.
  std::vector<E820Entry> E820Map() const;

  // True if [addr, addr + len) lies inside one region (len 0: addr inside or
  // at the end of a region).
  bool Contains(GuestAddress addr, uint64_t len) const;

  // A host view of [addr, addr + len), which must lie inside one region.
  absl::StatusOr<std::span<uint8_t>> Slice(GuestAddress addr, uint64_t len);
  absl::StatusOr<std::span<const uint8_t>> Slice(GuestAddress addr,
                                                 uint64_t len) const;

  absl::Status Read(GuestAddress addr, std::span<uint8_t> out) const;
  absl::Status Write(GuestAddress addr, std::span<const uint8_t> data);

  // A host view of bytes [file_offset, file_offset + len) of the backing
  // file, as mapped (for restoring a diff snapshot over its base). Not
  // dirty-tracked: for use before the VM runs.
  absl::StatusOr<std::span<uint8_t>> FileRange(uint64_t file_offset,
                                               uint64_t len);

  // VMM-side dirty tracking for diff snapshots. KVM's dirty log sees only
  // the guest's writes; once StartDirtyTracking() was called, every write
  // the VMM makes (Write, WriteObj, and the mutable Slice: counted as
  // written when handed out, which is conservative) marks its pages in a
  // bitmap over the backing file's pages (bit i: file page i).
  // Thread-safe.
  void StartDirtyTracking();
  bool dirty_tracking() const { return tracking_.load(std::memory_order_acquire); }
  // ORs the pages marked since the last call into `bitmap` (REQUIRES: at
  // least ram_bytes / 4096 bits) and clears them here.
  void CollectDirty(std::vector<uint64_t>& bitmap);

  // Reads or writes one trivially copyable object at `addr` (no alignment
  // required).
  template <typename T>
  absl::StatusOr<T> ReadObj(GuestAddress addr) const {
    static_assert(std::is_trivially_copyable_v<T>);
    T value;
    absl::Status s = Read(addr, std::span(reinterpret_cast<uint8_t*>(&value),
                                          sizeof(T)));
    if (!s.ok()) return s;
    return value;
  }
  template <typename T>
  absl::Status WriteObj(GuestAddress addr, const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    return Write(addr, std::span(reinterpret_cast<const uint8_t*>(&value),
                                 sizeof(T)));
  }

 private:
  GuestMemory(UniqueFd fd, uint8_t* base, uint64_t ram_bytes,
              std::vector<MemoryRegion> regions, bool private_mapping);
  // Maps all of `fd` (`ram_bytes`) with `flags` and cuts it into regions.
  static absl::StatusOr<std::unique_ptr<GuestMemory>> Map(UniqueFd fd,
                                                          uint64_t ram_bytes,
                                                          int flags);

  // The region holding [addr, addr + len), or nullptr.
  const MemoryRegion* Find(GuestAddress addr, uint64_t len) const;
  // Marks file bytes [file_offset, +len) written, when tracking.
  void MarkDirty(uint64_t file_offset, uint64_t len);

  UniqueFd fd_;
  uint8_t* base_;  // mapping of the whole file, ram_bytes_ long
  uint64_t ram_bytes_;
  std::vector<MemoryRegion> regions_;
  bool private_mapping_;
  std::atomic<bool> tracking_{false};
  // ram_bytes_ / 4096 bits, rounded up to words; allocated by
  // StartDirtyTracking (once) before tracking_ is set.
  std::unique_ptr<std::atomic<uint64_t>[]> dirty_;
  size_t dirty_words_ = 0;
};

}  // namespace sbx::vmm

#endif  // SBX_VMM_MEMORY_GUEST_MEMORY_H_
