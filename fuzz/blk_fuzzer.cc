// Fuzzes virtio-blk request handling (vmm/virtio/blk/block.h): the real
// Block device, activated over a queue in guest RAM built from the input,
// serves every request the hostile driver posts (T_IN, T_OUT, T_FLUSH,
// T_GET_ID, anything else) against a small disk in a memfd, read-only or
// read-write.
//
// Input: a 16-byte header, then guest RAM from address 0 (zeros after):
//   0      queue size: 2^(b % 9), so 1..256
//   1      bit 0: VIRTIO_F_EVENT_IDX, bit 1: VIRTIO_F_INDIRECT_DESC,
//          bit 2: read-only disk
//   2..5   next_avail, next_used (u16 each)
//   6..7   disk size: (v % 4097) bytes * 16, so sizes that are not whole
//          sectors occur too
// The ring sits at fuzz::LayOutRing(0, size).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "base/event_fd.h"
#include "fuzz/fuzz_common.h"
#include "vmm/virtio/blk/block.h"
#include "vmm/virtio/interrupt.h"
#include "vmm/virtio/queue.h"

namespace sbx::fuzz {
namespace {

using vmm::virtio::Block;
using vmm::virtio::Interrupt;
using vmm::virtio::Queue;

constexpr size_t kHeaderBytes = 16;

struct Fixture {
  UniqueFd disk;
  std::unique_ptr<Interrupt> interrupt;
};

Fixture& Fix() {
  static Fixture* f = [] {
    auto* f = new Fixture;
    f->disk.reset(::memfd_create("sbx-fuzz-disk", MFD_CLOEXEC));
    SBX_FUZZ_ASSERT(f->disk.valid());
    absl::StatusOr<EventFd> irq = EventFd::Create();
    SBX_FUZZ_ASSERT(irq.ok());
    f->interrupt = std::make_unique<Interrupt>(*std::move(irq));
    return f;
  }();
  return *f;
}

void RunOne(const uint8_t* data, size_t size) {
  InputReader in(data, size);
  const uint16_t qsize = QueueSizeFrom(in.Take<uint8_t>(), Block::kQueueSize);
  const uint8_t flags = in.Take<uint8_t>();
  const uint16_t next_avail = in.Take<uint16_t>();
  const uint16_t next_used = in.Take<uint16_t>();
  const uint64_t disk_bytes = (in.Take<uint16_t>() % 4097) * 16;
  in.Seek(kHeaderBytes);

  vmm::GuestMemory& mem = FuzzMemory();
  LoadImage(mem, in.Rest());

  // A fresh, zeroed disk of the chosen size every time.
  Fixture& fix = Fix();
  SBX_FUZZ_ASSERT(::ftruncate(fix.disk.get(), 0) == 0);
  SBX_FUZZ_ASSERT(::ftruncate(fix.disk.get(), static_cast<off_t>(disk_bytes)) == 0);
  UniqueFd fd(::fcntl(fix.disk.get(), F_DUPFD_CLOEXEC, 0));
  SBX_FUZZ_ASSERT(fd.valid());
  absl::StatusOr<std::unique_ptr<Block>> blk = Block::Create(
      std::move(fd), {.read_only = (flags & 4) != 0, .serial = "sbx-fuzz-disk"});
  SBX_FUZZ_ASSERT(blk.ok());
  SBX_FUZZ_ASSERT((*blk)->capacity_sectors() == disk_bytes / Block::kSectorSize);

  const RingLayout ring = LayOutRing(0, qsize);
  Queue q(Block::kQueueSize);
  q.size = qsize;
  q.desc_table = ring.desc;
  q.avail_ring = ring.avail;
  q.used_ring = ring.used;
  q.event_idx = flags & 1;
  q.indirect_desc = flags & 2;
  q.next_avail = next_avail;
  q.next_used = next_used;
  q.signalled_used = next_used;
  q.ready = true;
  SBX_FUZZ_ASSERT(q.Validate(mem).ok());

  uint64_t features = (*blk)->device_features() | vmm::virtio::kFeatureVersion1;
  if (q.event_idx) features |= vmm::virtio::kFeatureEventIdx;
  if (q.indirect_desc) features |= vmm::virtio::kFeatureIndirectDesc;
  SBX_FUZZ_ASSERT(
      (*blk)->Activate(mem, features, std::span(&q, 1), *fix.interrupt).ok());
  (*blk)->ProcessQueue(0);
  // A kick with nothing new.
  (*blk)->ProcessQueue(0);
  (*blk)->Reset();
  (void)fix.interrupt->irq().Consume();
  fix.interrupt->Clear();

  // Never larger than it was: the device only writes inside the disk.
  struct stat st;
  SBX_FUZZ_ASSERT(::fstat(fix.disk.get(), &st) == 0);
  SBX_FUZZ_ASSERT(static_cast<uint64_t>(st.st_size) == disk_bytes);
}

void WriteSeeds() {
  // 8 KiB disk (16 sectors), queue size 8.
  auto header = [](uint8_t flags) {
    std::vector<uint8_t> h(kHeaderBytes, 0);
    h[0] = 3;  // size 8
    h[1] = flags;
    const uint16_t disk = 8192 / 16;
    std::memcpy(&h[6], &disk, 2);
    return h;
  };
  const uint16_t size = 8;
  const RingLayout r = LayOutRing(0, size);
  constexpr uint64_t kHdr = 0x1000;     // request headers
  constexpr uint64_t kData = 0x2000;    // data buffers
  constexpr uint64_t kStatus = 0x1800;  // status bytes
  auto request_header = [](ImageBuilder& img, uint64_t at, uint32_t type,
                           uint64_t sector) {
    img.PutObj<uint32_t>(at, type);
    img.PutObj<uint32_t>(at + 4, 0);
    img.PutObj<uint64_t>(at + 8, sector);
  };
  using vmm::virtio::kDescFNext;
  using vmm::virtio::kDescFWrite;
  {
    // T_OUT of 1 KiB at sector 2, then T_IN of 1 KiB at sector 2, then
    // T_FLUSH, then T_GET_ID.
    ImageBuilder img;
    request_header(img, kHdr, 1, 2);
    img.Descriptor(r.desc, 0, kHdr, 16, kDescFNext, 1);
    img.Descriptor(r.desc, 1, kData, 1024, kDescFNext, 2);
    img.Descriptor(r.desc, 2, kStatus, 1, kDescFWrite, 0);
    request_header(img, kHdr + 16, 0, 2);
    img.Descriptor(r.desc, 3, kHdr + 16, 16, kDescFNext, 4);
    img.Descriptor(r.desc, 4, kData + 0x400, 1024, kDescFNext | kDescFWrite, 5);
    img.Descriptor(r.desc, 5, kStatus + 1, 1, kDescFWrite, 0);
    request_header(img, kHdr + 32, 4, 0);
    img.Descriptor(r.desc, 6, kHdr + 32, 16, kDescFNext, 7);
    img.Descriptor(r.desc, 7, kStatus + 2, 1, kDescFWrite, 0);
    img.Avail(r, size, 0, 0, 3);
    img.Avail(r, size, 1, 3, 3);
    img.Avail(r, size, 2, 6, 3);
    for (int i = 0; i < 1024; ++i) {
      img.PutObj<uint8_t>(kData + i, static_cast<uint8_t>(i * 7));
    }
    WriteSeed("write_read_flush", Concat(header(0), img.bytes()));
    WriteSeed("write_read_flush_ro", Concat(header(4), img.bytes()));
  }
  {
    // T_GET_ID into a 20-byte buffer; a T_IN past the end of the disk; an
    // unsupported type.
    ImageBuilder img;
    request_header(img, kHdr, 8, 0);
    img.Descriptor(r.desc, 0, kHdr, 16, kDescFNext, 1);
    img.Descriptor(r.desc, 1, kData, 20, kDescFNext | kDescFWrite, 2);
    img.Descriptor(r.desc, 2, kStatus, 1, kDescFWrite, 0);
    request_header(img, kHdr + 16, 0, 15);
    img.Descriptor(r.desc, 3, kHdr + 16, 16, kDescFNext, 4);
    img.Descriptor(r.desc, 4, kData + 0x400, 1024, kDescFNext | kDescFWrite, 5);
    img.Descriptor(r.desc, 5, kStatus + 1, 1, kDescFWrite, 0);
    request_header(img, kHdr + 32, 11, 0);
    img.Descriptor(r.desc, 6, kHdr + 32, 16, kDescFNext, 7);
    img.Descriptor(r.desc, 7, kStatus + 2, 1, kDescFWrite, 0);
    img.Avail(r, size, 0, 0, 3);
    img.Avail(r, size, 1, 3, 3);
    img.Avail(r, size, 2, 6, 3);
    WriteSeed("get_id_out_of_range", Concat(header(0), img.bytes()));
  }
  {
    // Indirect: a T_IN whose data is split over three buffers, the header
    // split over two.
    ImageBuilder img;
    const uint64_t table = 0x3000;
    request_header(img, kHdr, 0, 1);
    img.Descriptor(r.desc, 0, table, 6 * 16, vmm::virtio::kDescFIndirect, 0);
    img.Descriptor(table, 0, kHdr, 4, kDescFNext, 1);
    img.Descriptor(table, 1, kHdr + 4, 12, kDescFNext, 2);
    img.Descriptor(table, 2, kData, 100, kDescFNext | kDescFWrite, 3);
    img.Descriptor(table, 3, kData + 0x100, 312, kDescFNext | kDescFWrite, 4);
    img.Descriptor(table, 4, kData + 0x300, 612, kDescFNext | kDescFWrite, 5);
    img.Descriptor(table, 5, kStatus, 1, kDescFWrite, 0);
    img.Avail(r, size, 0, 0, 1);
    WriteSeed("indirect_split", Concat(header(2), img.bytes()));
  }
}

}  // namespace
}  // namespace sbx::fuzz

// libFuzzer's entry points: this target's WriteSeeds and RunOne.
SBX_FUZZ_ENTRY_POINTS()
