#include "vmm/virtio/queue.h"

#include <atomic>
#include <bit>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/hex.h"
#include "base/logging.h"

namespace sbx::vmm::virtio {
namespace {

// virtio is little-endian (§2.7, "le16"/"le32"/"le64"); so is every host
// sbx runs on, which lets the ring structures be read as plain integers.
static_assert(std::endian::native == std::endian::little);

// struct virtq_desc (§2.7.5).
struct VirtqDesc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(VirtqDesc) == 16);

// struct virtq_used_elem (§2.7.8).
struct VirtqUsedElem {
  uint32_t id;
  uint32_t len;
};
static_assert(sizeof(VirtqUsedElem) == 8);

// Ring layout (§2.7.6, §2.7.8): flags, idx, ring[size], then the event-idx
// field (used_event in the available ring, avail_event in the used ring).
constexpr uint64_t kRingHeader = 4;
constexpr uint64_t kAvailFlagsOffset = 0;
constexpr uint64_t kRingIdxOffset = 2;
constexpr uint64_t kAvailElemSize = 2;
constexpr uint64_t kUsedElemSize = sizeof(VirtqUsedElem);

uint64_t AvailRingBytes(uint16_t size) {
  return kRingHeader + kAvailElemSize * size + 2;
}
uint64_t UsedRingBytes(uint16_t size) {
  return kRingHeader + kUsedElemSize * size + 2;
}

// A host pointer to the naturally aligned u16 at `addr`, for the atomic
// accesses to ring fields the driver updates concurrently; nullptr if it is
// outside guest RAM or misaligned.
uint16_t* RingField(GuestMemory& mem, GuestAddress addr) {
  absl::StatusOr<std::span<uint8_t>> s = mem.Slice(addr, sizeof(uint16_t));
  if (!s.ok() ||
      reinterpret_cast<uintptr_t>(s->data()) % alignof(uint16_t) != 0) {
    return nullptr;
  }
  return reinterpret_cast<uint16_t*>(s->data());
}

std::optional<uint16_t> LoadRingField(GuestMemory& mem, GuestAddress addr) {
  uint16_t* p = RingField(mem, addr);
  if (p == nullptr) return std::nullopt;
  return std::atomic_ref<uint16_t>(*p).load(std::memory_order_relaxed);
}

bool StoreRingField(GuestMemory& mem, GuestAddress addr, uint16_t value) {
  uint16_t* p = RingField(mem, addr);
  if (p == nullptr) return false;
  std::atomic_ref<uint16_t>(*p).store(value, std::memory_order_relaxed);
  return true;
}


}  // namespace

absl::Status DescriptorChain::ReadReadable(const GuestMemory& mem,
                                           uint64_t offset,
                                           std::span<uint8_t> out) const {
  if (offset > readable_bytes_ || out.size() > readable_bytes_ - offset) {
    return absl::OutOfRangeError("read past the readable part of the chain");
  }
  for (const Descriptor& d : readable()) {
    if (out.empty()) break;
    if (offset >= d.len) {
      offset -= d.len;
      continue;
    }
    uint64_t n = std::min<uint64_t>(d.len - offset, out.size());
    absl::Status s = mem.Read(d.addr + offset, out.first(n));
    if (!s.ok()) return s;
    out = out.subspan(n);
    offset = 0;
  }
  return absl::OkStatus();
}

absl::Status DescriptorChain::WriteWritable(
    GuestMemory& mem, uint64_t offset, std::span<const uint8_t> data) const {
  if (offset > writable_bytes_ || data.size() > writable_bytes_ - offset) {
    return absl::OutOfRangeError("write past the writable part of the chain");
  }
  for (const Descriptor& d : writable()) {
    if (data.empty()) break;
    if (offset >= d.len) {
      offset -= d.len;
      continue;
    }
    uint64_t n = std::min<uint64_t>(d.len - offset, data.size());
    absl::Status s = mem.Write(d.addr + offset, data.first(n));
    if (!s.ok()) return s;
    data = data.subspan(n);
    offset = 0;
  }
  return absl::OkStatus();
}

Queue::Queue(uint16_t max_size) : max_size_(max_size) {
  SBX_CHECK(max_size > 0 && std::has_single_bit(max_size) &&
            max_size <= kMaxQueueSize)
      << "virtqueue max size " << max_size;
  Reset();
}

void Queue::Reset() {
  size = max_size_;
  ready = false;
  desc_table = 0;
  avail_ring = 0;
  used_ring = 0;
  event_idx = false;
  indirect_desc = false;
  next_avail = 0;
  next_used = 0;
  signalled_used = 0;
  needs_reset = false;
}

absl::Status Queue::Validate(const GuestMemory& mem) const {
  if (size == 0 || size > max_size_ || !std::has_single_bit(size)) {
    return absl::InvalidArgumentError(
        "queue size " + std::to_string(size) +
        " is not a power of 2 in [1, " + std::to_string(max_size_) + "]");
  }
  // §2.7 "Virtqueue alignment": descriptor table 16, available ring 2,
  // used ring 4.
  if (desc_table % 16 != 0 || avail_ring % 2 != 0 || used_ring % 4 != 0) {
    return absl::InvalidArgumentError(
        "misaligned virtqueue: desc " + Hex(desc_table) + ", avail " +
        Hex(avail_ring) + ", used " + Hex(used_ring));
  }
  if (!mem.Contains(desc_table, uint64_t{sizeof(VirtqDesc)} * size)) {
    return absl::InvalidArgumentError("descriptor table at " +
                                      Hex(desc_table) + " is outside RAM");
  }
  if (!mem.Contains(avail_ring, AvailRingBytes(size))) {
    return absl::InvalidArgumentError("available ring at " + Hex(avail_ring) +
                                      " is outside RAM");
  }
  if (!mem.Contains(used_ring, UsedRingBytes(size))) {
    return absl::InvalidArgumentError("used ring at " + Hex(used_ring) +
                                      " is outside RAM");
  }
  return absl::OkStatus();
}

std::optional<uint16_t> Queue::ReadAvailIdx(GuestMemory& mem) const {
  return LoadRingField(mem, avail_ring + kRingIdxOffset);
}

void Queue::Stop(const std::string& why) {
  SBX_LOG_EVERY_N_SEC(WARNING, 1)
      << "virtqueue: " << why << "; queue stopped until device reset";
  needs_reset = true;
}

std::optional<DescriptorChain> Queue::Pop(GuestMemory& mem) {
  if (!ready || needs_reset || size == 0) return std::nullopt;
  for (;;) {
    std::optional<uint16_t> avail_idx = ReadAvailIdx(mem);
    if (!avail_idx.has_value()) {
      Stop("available ring " + Hex(avail_ring) + " is outside guest RAM");
      return std::nullopt;
    }
    // Both indices are free-running u16s (§2.7.6), so the difference is the
    // number of new entries modulo 2^16. More than `size` cannot be: the
    // driver broke the protocol, and the ring's content is meaningless.
    uint16_t pending = static_cast<uint16_t>(*avail_idx - next_avail);
    if (pending > size) {
      Stop(absl::StrCat("avail idx ", *avail_idx, " is ", pending,
                        " entries ahead of ", next_avail, " (queue size ",
                        size, ")"));
      return std::nullopt;
    }
    if (pending == 0) {
      if (!event_idx) return std::nullopt;
      // §2.7.10: ask the driver to kick when it makes entry next_avail
      // available, then look again: an entry added after the first look
      // but before the driver saw the new avail_event would otherwise wait
      // for a kick that never comes. The full fence orders the store before
      // the load (the driver does the mirror image).
      if (!StoreRingField(mem, used_ring + kRingHeader + kUsedElemSize * size,
                          next_avail)) {
        Stop("used ring " + Hex(used_ring) + " is outside guest RAM");
        return std::nullopt;
      }
      std::atomic_thread_fence(std::memory_order_seq_cst);
      std::optional<uint16_t> again = ReadAvailIdx(mem);
      if (!again.has_value() || *again == next_avail) return std::nullopt;
      continue;
    }
    // §2.7.13: the ring entry and descriptors are read only after the idx
    // that published them.
    std::atomic_thread_fence(std::memory_order_acquire);
    absl::StatusOr<uint16_t> head = mem.ReadObj<uint16_t>(
        avail_ring + kRingHeader + kAvailElemSize * (next_avail % size));
    if (!head.ok()) {
      Stop("available ring " + Hex(avail_ring) + " is outside guest RAM");
      return std::nullopt;
    }
    ++next_avail;

    DescriptorChain chain;
    chain.head_index_ = *head;
    absl::Status s = ParseChain(mem, *head, chain);
    if (s.ok()) return chain;
    SBX_LOG_EVERY_N_SEC(WARNING, 1)
        << "virtqueue: dropping descriptor chain at head " << *head << ": "
        << s.message();
    // Hand the chain back unprocessed so a driver that merely erred gets
    // its descriptors back. A head outside the table cannot be returned.
    if (*head < size) {
      absl::Status used = AddUsed(mem, *head, 0);
      if (!used.ok()) {
        Stop(std::string(used.message()));
        return std::nullopt;
      }
    }
  }
}

absl::Status Queue::ParseChain(const GuestMemory& mem, uint16_t head,
                               DescriptorChain& chain) const {
  // The table being walked: the queue's own, then at most one indirect
  // table (§2.7.5.3.1: no indirect descriptor inside an indirect table).
  GuestAddress table = desc_table;
  uint32_t table_entries = size;
  bool in_indirect = false;
  // Every descriptor visited costs one unit, so a chain with a loop runs
  // out (§2.7.5: the queue size is the longest possible chain; §2.7.5.2:
  // loops are forbidden).
  uint32_t ttl = size;
  uint32_t index = head;
  bool seen_writable = false;

  for (;;) {
    if (index >= table_entries) {
      return absl::OutOfRangeError("descriptor index " + std::to_string(index) +
                                   " is not below " +
                                   std::to_string(table_entries));
    }
    if (ttl == 0) {
      return absl::OutOfRangeError(
          "chain longer than the queue (a loop?)");
    }
    --ttl;
    absl::StatusOr<VirtqDesc> desc =
        mem.ReadObj<VirtqDesc>(table + sizeof(VirtqDesc) * index);
    if (!desc.ok()) return desc.status();

    if (desc->flags & kDescFIndirect) {
      if (!indirect_desc) {
        return absl::InvalidArgumentError(
            "indirect descriptor without VIRTIO_F_INDIRECT_DESC");
      }
      if (in_indirect) {
        return absl::InvalidArgumentError("nested indirect descriptor");
      }
      if (desc->flags & kDescFNext) {
        return absl::InvalidArgumentError("indirect descriptor with NEXT");
      }
      if (desc->len == 0 || desc->len % sizeof(VirtqDesc) != 0 ||
          desc->len / sizeof(VirtqDesc) > size) {
        return absl::InvalidArgumentError(
            "indirect table length " + std::to_string(desc->len) +
            " is not a multiple of 16 in [16, 16 * queue size]");
      }
      if (!mem.Contains(desc->addr, desc->len)) {
        return absl::OutOfRangeError("indirect table at " + Hex(desc->addr) +
                                     " is outside guest RAM");
      }
      table = desc->addr;
      table_entries = desc->len / sizeof(VirtqDesc);
      in_indirect = true;
      ttl = table_entries;
      index = 0;
      continue;
    }

    if (!mem.Contains(desc->addr, desc->len)) {
      return absl::OutOfRangeError("buffer [" + Hex(desc->addr) + ", +" +
                                   Hex(desc->len) + ") is outside guest RAM");
    }
    if (chain.descriptors_.size() >= size) {
      return absl::OutOfRangeError("chain has more buffers than the queue");
    }
    bool writable = (desc->flags & kDescFWrite) != 0;
    if (writable) {
      seen_writable = true;
      chain.writable_bytes_ += desc->len;
    } else {
      // §2.7.4.2: device-readable buffers come first.
      if (seen_writable) {
        return absl::InvalidArgumentError(
            "device-readable buffer after a device-writable one");
      }
      ++chain.num_readable_;
      chain.readable_bytes_ += desc->len;
    }
    chain.descriptors_.push_back(
        {.addr = desc->addr, .len = desc->len, .device_writable = writable});

    if (!(desc->flags & kDescFNext)) return absl::OkStatus();
    index = desc->next;
  }
}

absl::Status Queue::AddUsed(GuestMemory& mem, uint16_t head_index,
                            uint32_t len) {
  if (head_index >= size) {
    return absl::InvalidArgumentError("used head " +
                                      std::to_string(head_index) +
                                      " is not below the queue size");
  }
  GuestAddress elem =
      used_ring + kRingHeader + kUsedElemSize * (next_used % size);
  absl::Status s = mem.WriteObj(elem, VirtqUsedElem{head_index, len});
  if (!s.ok()) return s;
  ++next_used;
  // §2.7.13: the element must be visible before the idx that publishes it.
  std::atomic_thread_fence(std::memory_order_release);
  if (!StoreRingField(mem, used_ring + kRingIdxOffset, next_used)) {
    return absl::OutOfRangeError("used ring at " + Hex(used_ring) +
                                 " is outside guest RAM");
  }
  return absl::OkStatus();
}

bool Queue::NeedsInterrupt(GuestMemory& mem) {
  uint16_t old_used = signalled_used;
  signalled_used = next_used;
  if (old_used == next_used) return false;  // nothing new since last time
  // The used idx store must be visible before the driver's suppression
  // field is read, or a driver that just re-enabled interrupts and saw the
  // old idx would sleep forever (§2.7.7.2, §2.7.10).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (event_idx) {
    std::optional<uint16_t> used_event =
        LoadRingField(mem, avail_ring + kRingHeader + kAvailElemSize * size);
    if (!used_event.has_value()) return true;
    // vring_need_event (§2.7.10): notify if used_event lies in the range of
    // entries added since the last check, [old_used, next_used).
    return static_cast<uint16_t>(next_used - *used_event - 1) <
           static_cast<uint16_t>(next_used - old_used);
  }
  std::optional<uint16_t> flags =
      LoadRingField(mem, avail_ring + kAvailFlagsOffset);
  if (!flags.has_value()) return true;
  return (*flags & kAvailFNoInterrupt) == 0;
}

}  // namespace sbx::vmm::virtio
