#ifndef SBX_VMM_VIRTIO_QUEUE_H_
#define SBX_VMM_VIRTIO_QUEUE_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "vmm/memory/guest_memory.h"

namespace sbx::vmm::virtio {

// Split virtqueue layout constants (virtio 1.2 §2.7).
inline constexpr uint16_t kDescFNext = 1;      // VIRTQ_DESC_F_NEXT
inline constexpr uint16_t kDescFWrite = 2;     // VIRTQ_DESC_F_WRITE
inline constexpr uint16_t kDescFIndirect = 4;  // VIRTQ_DESC_F_INDIRECT
inline constexpr uint16_t kAvailFNoInterrupt = 1;  // VIRTQ_AVAIL_F_NO_INTERRUPT
inline constexpr uint32_t kMaxQueueSize = 32768;   // §2.7: split queue limit

// One validated buffer of a descriptor chain: [addr, addr + len) lies
// inside one region of guest RAM.
struct Descriptor {
  GuestAddress addr = 0;
  uint32_t len = 0;
  bool device_writable = false;
};

// A descriptor chain popped from a queue (§2.7.5), flattened: indirect
// tables are resolved, every buffer is inside guest RAM, there are at most
// queue-size buffers, and all device-readable buffers come before all
// device-writable ones. The device hands head_index() back to
// Queue::AddUsed when it is done with the chain.
class DescriptorChain {
 public:
  uint16_t head_index() const { return head_index_; }

  // The device-readable buffers, then the device-writable ones, each in
  // chain order.
  std::span<const Descriptor> readable() const {
    return std::span(descriptors_).first(num_readable_);
  }
  std::span<const Descriptor> writable() const {
    return std::span(descriptors_).subspan(num_readable_);
  }
  uint64_t readable_bytes() const { return readable_bytes_; }
  uint64_t writable_bytes() const { return writable_bytes_; }

  // Copies out.size() bytes starting `offset` bytes into the readable part
  // of the chain, across buffer boundaries (§2.7.4: a device must not
  // assume any framing). Fails if the readable part is too short.
  absl::Status ReadReadable(const GuestMemory& mem, uint64_t offset,
                            std::span<uint8_t> out) const;
  // Copies `data` to `offset` bytes into the writable part of the chain.
  // Fails if the writable part is too short.
  absl::Status WriteWritable(GuestMemory& mem, uint64_t offset,
                             std::span<const uint8_t> data) const;

 private:
  friend class Queue;
  DescriptorChain() = default;

  uint16_t head_index_ = 0;
  std::vector<Descriptor> descriptors_;
  size_t num_readable_ = 0;
  uint64_t readable_bytes_ = 0;
  uint64_t writable_bytes_ = 0;
};

// The device side of one split virtqueue (§2.7): what the driver
// programmed through the transport, how far the device has consumed the
// available ring and filled the used ring, and the operations on the rings
// in guest memory. The guest is hostile: every index, address and length
// read from guest memory is checked, a malformed chain is logged
// (rate-limited) and handed back to the driver unprocessed, and an
// inconsistent ring stops the queue (needs_reset) -- never a crash and
// never an access outside guest RAM.
//
// Supports VIRTIO_F_INDIRECT_DESC (§2.7.5.3) and VIRTIO_F_EVENT_IDX
// (§2.7.7, §2.7.10), each only once its flag below is set (the transport
// sets them from the negotiated features).
//
// Thread-compatible: the transport serializes every call.
class Queue {
 public:
  // REQUIRES: max_size is a power of 2 in [1, kMaxQueueSize].
  explicit Queue(uint16_t max_size);

  uint16_t max_size() const { return max_size_; }

  // Back to the state after device reset (§2.4): not ready, no addresses,
  // indices 0, size = max_size.
  void Reset();

  // OK if the configuration is usable: size a power of 2 no larger than
  // max_size, the three rings aligned (§2.7: 16, 2, 4) and inside guest RAM.
  absl::Status Validate(const GuestMemory& mem) const;

  // The next available descriptor chain, or nullopt if there is none (or
  // the queue is not ready, or needs_reset). Malformed chains are logged,
  // returned to the used ring with length 0 and skipped. With event_idx,
  // before reporting an empty ring it publishes avail_event = next_avail
  // so the driver kicks for the next buffer (§2.7.10).
  std::optional<DescriptorChain> Pop(GuestMemory& mem);

  // Puts (head_index, len) in the used ring and publishes the new used idx
  // (after a release fence, §2.7.13). `len` is the number of bytes the
  // device wrote into the chain's writable buffers (§2.7.8).
  absl::Status AddUsed(GuestMemory& mem, uint16_t head_index, uint32_t len);

  // Whether the driver wants an interrupt for the used buffers added since
  // the last call: VIRTQ_AVAIL_F_NO_INTERRUPT, or with event_idx the
  // used_event threshold (§2.7.7.2, §2.7.10). Call once after each batch of
  // AddUsed; raise the interrupt if it returns true.
  bool NeedsInterrupt(GuestMemory& mem);

  // The state the driver programs (through the transport) and the device
  // advances. Plain members so that the transport and snapshots can read
  // and write them directly.
  uint16_t size = 0;  // QueueNum
  bool ready = false;  // QueueReady
  GuestAddress desc_table = 0;  // QueueDesc
  GuestAddress avail_ring = 0;  // QueueDriver
  GuestAddress used_ring = 0;  // QueueDevice
  bool event_idx = false;  // VIRTIO_F_EVENT_IDX negotiated
  bool indirect_desc = false;  // VIRTIO_F_INDIRECT_DESC negotiated
  uint16_t next_avail = 0;  // next avail ring entry to pop (free-running)
  uint16_t next_used = 0;  // next used ring entry to fill (free-running)
  uint16_t signalled_used = 0;  // next_used at the last NeedsInterrupt()
  // Set when the driver broke the ring protocol (an avail idx more than
  // `size` ahead); Pop() returns nothing until the device is reset.
  bool needs_reset = false;

 private:
  // Logs `why` and sets needs_reset.
  void Stop(const std::string& why);
  // Reads avail->idx (or nullopt if the ring is outside RAM).
  std::optional<uint16_t> ReadAvailIdx(GuestMemory& mem) const;
  // Walks and checks the chain starting at descriptor `head`.
  absl::Status ParseChain(const GuestMemory& mem, uint16_t head,
                          DescriptorChain& chain) const;

  uint16_t max_size_;
};

}  // namespace sbx::vmm::virtio

#endif  // SBX_VMM_VIRTIO_QUEUE_H_
