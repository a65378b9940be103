// Fuzzes the split virtqueue (vmm/virtio/queue.h) as a hostile driver
// would: the descriptor table, available and used rings and every buffer
// are in guest RAM built from the input, and the device side pops every
// chain it is offered (Queue::Pop: avail idx checks, the descriptor walk
// with its TTL, indirect tables), reads and writes the chains' buffers and
// returns them (AddUsed, NeedsInterrupt), exactly as a device does.
//
// Input: a 16-byte header, then guest RAM from address 0 (zeros after):
//   0      queue size: 2^(b % 9), so 1..256
//   1      bit 0: VIRTIO_F_EVENT_IDX, bit 1: VIRTIO_F_INDIRECT_DESC
//   2..7   next_avail, next_used, signalled_used (u16 each, as a restored
//          queue may have them)
//   8..11  offset into each chain's readable part to read from
//   12..15 bytes to write into each chain's writable part
// The rings sit at fuzz::LayOutRing(0, size): the image starts with the
// descriptor table.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "fuzz/fuzz_common.h"
#include "vmm/virtio/queue.h"

namespace sbx::fuzz {
namespace {

using vmm::virtio::DescriptorChain;
using vmm::virtio::Queue;

constexpr size_t kHeaderBytes = 16;
constexpr uint16_t kMaxSize = 256;
// Caps on the bytes copied per chain (a chain may span all of RAM many
// times over); the accessors' bounds are what is under test, not memcpy.
constexpr uint64_t kMaxCopy = 4096;

// What Queue promises about a popped chain (queue.h).
void CheckChain(const vmm::GuestMemory& mem, const Queue& q,
                const DescriptorChain& chain) {
  SBX_FUZZ_ASSERT(chain.head_index() < q.size);
  SBX_FUZZ_ASSERT(chain.readable().size() + chain.writable().size() <= q.size);
  uint64_t readable = 0, writable = 0;
  for (const auto& d : chain.readable()) {
    SBX_FUZZ_ASSERT(!d.device_writable);
    SBX_FUZZ_ASSERT(mem.Contains(d.addr, d.len));
    readable += d.len;
  }
  for (const auto& d : chain.writable()) {
    SBX_FUZZ_ASSERT(d.device_writable);
    SBX_FUZZ_ASSERT(mem.Contains(d.addr, d.len));
    writable += d.len;
  }
  SBX_FUZZ_ASSERT(readable == chain.readable_bytes());
  SBX_FUZZ_ASSERT(writable == chain.writable_bytes());
}

void RunOne(const uint8_t* data, size_t size) {
  InputReader in(data, size);
  const uint16_t qsize = QueueSizeFrom(in.Take<uint8_t>(), kMaxSize);
  const uint8_t flags = in.Take<uint8_t>();
  const uint16_t next_avail = in.Take<uint16_t>();
  const uint16_t next_used = in.Take<uint16_t>();
  const uint16_t signalled_used = in.Take<uint16_t>();
  const uint32_t read_offset = in.Take<uint32_t>();
  const uint32_t write_len = in.Take<uint32_t>();
  in.Seek(kHeaderBytes);

  vmm::GuestMemory& mem = FuzzMemory();
  LoadImage(mem, in.Rest());

  // What the transport does on DRIVER_OK (or a restore): program the
  // queue, validate it, only then use it.
  const RingLayout ring = LayOutRing(0, qsize);
  Queue q(kMaxSize);
  q.size = qsize;
  q.desc_table = ring.desc;
  q.avail_ring = ring.avail;
  q.used_ring = ring.used;
  q.event_idx = flags & 1;
  q.indirect_desc = flags & 2;
  q.next_avail = next_avail;
  q.next_used = next_used;
  q.signalled_used = signalled_used;
  q.ready = true;
  SBX_FUZZ_ASSERT(q.Validate(mem).ok());

  std::vector<uint8_t> buf(kMaxCopy + 1);
  // Pop is bounded by itself (at most `size` entries are ever pending);
  // the cap only keeps a broken Pop from hanging the fuzzer.
  for (int popped = 0; popped <= 2 * kMaxSize; ++popped) {
    std::optional<DescriptorChain> chain = q.Pop(mem);
    if (!chain) break;
    SBX_FUZZ_ASSERT(popped < 2 * kMaxSize);
    CheckChain(mem, q, *chain);

    // Read from the readable part at the fuzzed offset: in range must
    // succeed, out of range must fail.
    // (The top bit of the offset asks for one byte too many.)
    const uint64_t off = read_offset % (chain->readable_bytes() + 2);
    const uint64_t left =
        chain->readable_bytes() - std::min(off, chain->readable_bytes());
    const uint64_t n = std::min(kMaxCopy, left) + (read_offset >> 31);
    absl::Status r = chain->ReadReadable(mem, off, std::span(buf).first(n));
    SBX_FUZZ_ASSERT(r.ok() == (off + n <= chain->readable_bytes()));

    const uint64_t w = std::min<uint64_t>(write_len % (kMaxCopy + 1),
                                          chain->writable_bytes() + 1);
    absl::Status s = chain->WriteWritable(mem, 0, std::span(buf).first(w));
    SBX_FUZZ_ASSERT(s.ok() == (w <= chain->writable_bytes()));

    absl::Status used = q.AddUsed(mem, chain->head_index(),
                                  static_cast<uint32_t>(s.ok() ? w : 0));
    SBX_FUZZ_ASSERT(used.ok());  // a validated used ring is inside RAM
  }
  (void)q.NeedsInterrupt(mem);
  // A second kick with nothing new: must find nothing (or stop).
  (void)q.Pop(mem);
}

void WriteSeeds() {
  auto header = [](uint8_t size_log2, uint8_t flags) {
    std::vector<uint8_t> h(kHeaderBytes, 0);
    h[0] = size_log2;
    h[1] = flags;
    h[8] = 4;    // read from offset 4
    h[12] = 64;  // write 64 bytes
    return h;
  };
  constexpr uint64_t kBuf = 0x2000;  // buffers live from 8 KiB on
  {
    // Size 8: one chain of two readable buffers and one writable one.
    const uint16_t size = 8;
    RingLayout r = LayOutRing(0, size);
    ImageBuilder img;
    img.Descriptor(r.desc, 0, kBuf, 16, vmm::virtio::kDescFNext, 1);
    img.Descriptor(r.desc, 1, kBuf + 16, 100, vmm::virtio::kDescFNext, 2);
    img.Descriptor(r.desc, 2, kBuf + 0x200, 512, vmm::virtio::kDescFWrite, 0);
    img.Avail(r, size, 0, 0, 1);
    img.PutObj<uint64_t>(kBuf, 0x1122334455667788);
    WriteSeed("chain", Concat(header(3, 0), img.bytes()));
  }
  {
    // Size 16, event idx and indirect descriptors: an indirect table of
    // three, then a plain single-buffer chain.
    const uint16_t size = 16;
    RingLayout r = LayOutRing(0, size);
    ImageBuilder img;
    const uint64_t table = kBuf;
    img.Descriptor(r.desc, 0, table, 3 * 16, vmm::virtio::kDescFIndirect, 0);
    img.Descriptor(table, 0, kBuf + 0x100, 16, vmm::virtio::kDescFNext, 1);
    img.Descriptor(table, 1, kBuf + 0x110, 32, vmm::virtio::kDescFNext, 2);
    img.Descriptor(table, 2, kBuf + 0x200, 128, vmm::virtio::kDescFWrite, 0);
    img.Descriptor(r.desc, 1, kBuf + 0x400, 64, vmm::virtio::kDescFWrite, 0);
    img.Avail(r, size, 0, 0, 2);
    img.Avail(r, size, 1, 1, 2);
    WriteSeed("indirect_event_idx", Concat(header(4, 3), img.bytes()));
  }
  {
    // Size 4 with a descriptor loop (0 -> 1 -> 0): dropped by the TTL.
    const uint16_t size = 4;
    RingLayout r = LayOutRing(0, size);
    ImageBuilder img;
    img.Descriptor(r.desc, 0, kBuf, 8, vmm::virtio::kDescFNext, 1);
    img.Descriptor(r.desc, 1, kBuf, 8, vmm::virtio::kDescFNext, 0);
    img.Descriptor(r.desc, 2, kBuf, 8, 0, 0);
    img.Avail(r, size, 0, 0, 2);
    img.Avail(r, size, 1, 2, 2);
    WriteSeed("loop", Concat(header(2, 0), img.bytes()));
  }
  {
    // Free-running indices about to wrap: next_avail = 0xffff.
    const uint16_t size = 2;
    RingLayout r = LayOutRing(0, size);
    ImageBuilder img;
    img.Descriptor(r.desc, 0, kBuf, 32, vmm::virtio::kDescFWrite, 0);
    img.Descriptor(r.desc, 1, kBuf + 32, 32, 0, 0);
    img.Avail(r, size, 1, 0, 0x0000);   // entry 0xffff % 2
    img.Avail(r, size, 0, 1, 0x0001);   // entry 0x0000 % 2
    std::vector<uint8_t> h = header(1, 0);
    h[2] = 0xff;
    h[3] = 0xff;  // next_avail 0xffff
    h[4] = 0xfe;
    h[5] = 0xff;  // next_used 0xfffe
    WriteSeed("wrap", Concat(h, img.bytes()));
  }
}

}  // namespace
}  // namespace sbx::fuzz

// libFuzzer's entry points: this target's WriteSeeds and RunOne.
SBX_FUZZ_ENTRY_POINTS()
