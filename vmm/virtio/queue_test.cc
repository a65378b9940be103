#include "vmm/virtio/queue.h"

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "gtest/gtest.h"
#include "vmm/memory/guest_memory.h"
#include "vmm/virtio/testing/fake_driver.h"

namespace sbx::vmm::virtio {
namespace {

using testing::FakeVirtqueue;

constexpr uint64_t kRamBytes = 1 << 20;
constexpr uint16_t kSize = 16;
constexpr GuestAddress kRingBase = 0x1000;
constexpr GuestAddress kData = 0x10000;
constexpr GuestAddress kIndirectTable = 0x20000;

class QueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto mem = GuestMemory::Create(kRamBytes);
    ASSERT_TRUE(mem.ok()) << mem.status();
    mem_ = *std::move(mem);
    vq_.emplace(*mem_, kRingBase, kSize);
    vq_->Configure(queue_);
    ASSERT_TRUE(queue_.Validate(*mem_).ok());
  }

  // Pops, expecting nothing (a malformed chain is dropped), and checks the
  // dropped chain was handed back with length 0.
  void ExpectDroppedAndReturned(uint16_t head) {
    uint16_t used_before = vq_->UsedIdx();
    EXPECT_FALSE(queue_.Pop(*mem_).has_value());
    ASSERT_EQ(vq_->UsedIdx(), used_before + 1);
    EXPECT_EQ(vq_->Used(used_before).id, head);
    EXPECT_EQ(vq_->Used(used_before).len, 0u);
    EXPECT_FALSE(queue_.needs_reset);
  }

  std::unique_ptr<GuestMemory> mem_;
  std::optional<FakeVirtqueue> vq_;
  Queue queue_{kSize};
};

TEST_F(QueueTest, PopsAChainAndPublishesItsUsedElement) {
  uint16_t head = vq_->Post({{kData, 16, false},
                             {kData + 0x1000, 512, true},
                             {kData + 0x2000, 1, true}});
  std::optional<DescriptorChain> chain = queue_.Pop(*mem_);
  ASSERT_TRUE(chain.has_value());
  EXPECT_EQ(chain->head_index(), head);
  ASSERT_EQ(chain->readable().size(), 1u);
  ASSERT_EQ(chain->writable().size(), 2u);
  EXPECT_EQ(chain->readable()[0].addr, kData);
  EXPECT_EQ(chain->writable()[0].addr, kData + 0x1000);
  EXPECT_EQ(chain->writable()[1].len, 1u);
  EXPECT_TRUE(chain->writable()[1].device_writable);
  EXPECT_EQ(chain->readable_bytes(), 16u);
  EXPECT_EQ(chain->writable_bytes(), 513u);
  EXPECT_FALSE(queue_.Pop(*mem_).has_value());  // ring now empty

  ASSERT_TRUE(queue_.AddUsed(*mem_, head, 513).ok());
  EXPECT_EQ(vq_->UsedIdx(), 1);
  EXPECT_EQ(vq_->Used(0).id, head);
  EXPECT_EQ(vq_->Used(0).len, 513u);
  EXPECT_EQ(queue_.next_avail, 1);
  EXPECT_EQ(queue_.next_used, 1);
}

TEST_F(QueueTest, ReadsAndWritesAcrossBufferBoundaries) {
  // A 16-byte header split 5 + 11 over two descriptors, and a writable
  // part split 3 + 5.
  std::array<uint8_t, 16> header;
  for (size_t i = 0; i < header.size(); ++i) header[i] = 0xa0 + i;
  ASSERT_TRUE(mem_->Write(kData, std::span(header).first(5)).ok());
  ASSERT_TRUE(mem_->Write(kData + 0x100, std::span(header).subspan(5)).ok());
  vq_->Post({{kData, 5, false},
             {kData + 0x100, 11, false},
             {kData + 0x200, 3, true},
             {kData + 0x300, 5, true}});
  std::optional<DescriptorChain> chain = queue_.Pop(*mem_);
  ASSERT_TRUE(chain.has_value());

  std::array<uint8_t, 16> read{};
  ASSERT_TRUE(chain->ReadReadable(*mem_, 0, read).ok());
  EXPECT_EQ(read, header);
  std::array<uint8_t, 2> tail{};
  ASSERT_TRUE(chain->ReadReadable(*mem_, 14, tail).ok());
  EXPECT_EQ(tail[0], 0xae);
  EXPECT_FALSE(chain->ReadReadable(*mem_, 15, tail).ok());  // past the end

  std::array<uint8_t, 4> data = {1, 2, 3, 4};
  ASSERT_TRUE(chain->WriteWritable(*mem_, 1, data).ok());
  EXPECT_EQ(*mem_->ReadObj<uint8_t>(kData + 0x201), 1);
  EXPECT_EQ(*mem_->ReadObj<uint8_t>(kData + 0x202), 2);
  EXPECT_EQ(*mem_->ReadObj<uint8_t>(kData + 0x300), 3);
  EXPECT_EQ(*mem_->ReadObj<uint8_t>(kData + 0x301), 4);
  EXPECT_FALSE(chain->WriteWritable(*mem_, 5, data).ok());  // 9 > 8 bytes
}

TEST_F(QueueTest, NotReadyQueuePopsNothing) {
  vq_->Post({{kData, 16, true}});
  queue_.ready = false;
  EXPECT_FALSE(queue_.Pop(*mem_).has_value());
  EXPECT_EQ(queue_.next_avail, 0);
}

TEST_F(QueueTest, HeadIndexBeyondTheQueueIsSkipped) {
  vq_->MakeAvailable(kSize);  // descriptor 16 of a 16-entry table
  EXPECT_FALSE(queue_.Pop(*mem_).has_value());
  EXPECT_EQ(queue_.next_avail, 1);
  // Nothing can be returned for an index the driver never owned.
  EXPECT_EQ(vq_->UsedIdx(), 0);
  // The queue keeps working.
  uint16_t head = vq_->Post({{kData, 8, true}});
  std::optional<DescriptorChain> chain = queue_.Pop(*mem_);
  ASSERT_TRUE(chain.has_value());
  EXPECT_EQ(chain->head_index(), head);
}

TEST_F(QueueTest, NextIndexBeyondTheQueueDropsTheChain) {
  vq_->WriteDescriptor(0, kData, 8, kDescFNext, kSize + 3);
  vq_->MakeAvailable(0);
  ExpectDroppedAndReturned(0);
}

TEST_F(QueueTest, DescriptorLoopsTerminate) {
  vq_->WriteDescriptor(0, kData, 8, kDescFNext, 1);
  vq_->WriteDescriptor(1, kData, 8, kDescFNext, 0);
  vq_->MakeAvailable(0);
  ExpectDroppedAndReturned(0);

  vq_->WriteDescriptor(5, kData, 8, kDescFNext, 5);  // points at itself
  vq_->MakeAvailable(5);
  ExpectDroppedAndReturned(5);
}

TEST_F(QueueTest, BuffersOutsideGuestRamDropTheChain) {
  // Straddles the end of RAM.
  vq_->WriteDescriptor(0, kRamBytes - 8, 16, 0, 0);
  vq_->MakeAvailable(0);
  ExpectDroppedAndReturned(0);
  // Starts beyond it.
  vq_->WriteDescriptor(1, kRamBytes + 0x1000, 1, kDescFWrite, 0);
  vq_->MakeAvailable(1);
  ExpectDroppedAndReturned(1);
  // addr + len wraps around 2^64.
  vq_->WriteDescriptor(2, ~uint64_t{0} - 4, 16, 0, 0);
  vq_->MakeAvailable(2);
  ExpectDroppedAndReturned(2);
  // The bad buffer is the second of the chain.
  vq_->WriteDescriptor(3, kData, 16, kDescFNext, 4);
  vq_->WriteDescriptor(4, kRamBytes, 16, kDescFWrite, 0);
  vq_->MakeAvailable(3);
  ExpectDroppedAndReturned(3);
}

TEST_F(QueueTest, ReadableAfterWritableDropsTheChain) {
  uint16_t head = vq_->Post({{kData, 16, true}, {kData + 0x100, 16, false}});
  ExpectDroppedAndReturned(head);
}

TEST_F(QueueTest, AvailIdxTooFarAheadStopsTheQueue) {
  vq_->WriteChain({{kData, 16, true}});
  vq_->SetAvailIdx(kSize + 1);  // 17 new entries in a 16-entry ring
  EXPECT_FALSE(queue_.Pop(*mem_).has_value());
  EXPECT_TRUE(queue_.needs_reset);
  EXPECT_EQ(queue_.next_avail, 0);
  // Stays stopped even once the index looks sane again.
  vq_->SetAvailIdx(1);
  EXPECT_FALSE(queue_.Pop(*mem_).has_value());
  EXPECT_EQ(vq_->UsedIdx(), 0);
  // Until reset.
  queue_.Reset();
  EXPECT_FALSE(queue_.needs_reset);
}

TEST_F(QueueTest, ExactlyAFullRingIsAccepted) {
  for (int i = 0; i < kSize; ++i) vq_->Post({{kData + 0x10u * i, 16, true}});
  int popped = 0;
  while (queue_.Pop(*mem_).has_value()) ++popped;
  EXPECT_EQ(popped, kSize);
  EXPECT_FALSE(queue_.needs_reset);
}

TEST_F(QueueTest, IndicesWrapAround) {
  queue_.next_avail = 0xffff;
  queue_.next_used = 0xffff;
  queue_.signalled_used = 0xffff;
  vq_->SetAvailIdx(0xffff);
  uint16_t a = vq_->Post({{kData, 4, true}});
  uint16_t b = vq_->Post({{kData + 0x100, 4, true}});
  std::optional<DescriptorChain> first = queue_.Pop(*mem_);
  std::optional<DescriptorChain> second = queue_.Pop(*mem_);
  ASSERT_TRUE(first.has_value() && second.has_value());
  EXPECT_EQ(first->head_index(), a);
  EXPECT_EQ(second->head_index(), b);
  EXPECT_EQ(queue_.next_avail, 1);
  ASSERT_TRUE(queue_.AddUsed(*mem_, a, 4).ok());
  ASSERT_TRUE(queue_.AddUsed(*mem_, b, 4).ok());
  EXPECT_EQ(vq_->UsedIdx(), 1);
  EXPECT_EQ(vq_->Used(0xffff).id, a);
  EXPECT_EQ(vq_->Used(0).id, b);
}

TEST_F(QueueTest, AddUsedRefusesAHeadBeyondTheQueue) {
  EXPECT_FALSE(queue_.AddUsed(*mem_, kSize, 0).ok());
  EXPECT_EQ(vq_->UsedIdx(), 0);
}

TEST_F(QueueTest, LongestLegalChainIsAccepted) {
  // All 16 entries of the table linked into one chain.
  for (uint16_t i = 0; i < kSize; ++i) {
    bool last = i == kSize - 1;
    vq_->WriteDescriptor(i, kData + 0x10u * i, 16, last ? 0 : kDescFNext,
                         last ? 0 : i + 1);
  }
  vq_->MakeAvailable(0);
  std::optional<DescriptorChain> chain = queue_.Pop(*mem_);
  ASSERT_TRUE(chain.has_value());
  EXPECT_EQ(chain->readable().size(), kSize);
}

TEST_F(QueueTest, ChainWithMoreBuffersThanTheQueueIsDropped) {
  // §2.7.5.3.1: a chain is at most queue-size long, indirect buffers
  // included: one direct buffer plus a full 16-entry indirect table is 17.
  queue_.indirect_desc = true;
  for (uint16_t i = 0; i < kSize; ++i) {
    bool last = i == kSize - 1;
    vq_->WriteDescriptorAt(kIndirectTable, i, kData, 16,
                           last ? 0 : kDescFNext, last ? 0 : i + 1);
  }
  vq_->WriteDescriptor(0, kData, 16, kDescFNext, 1);
  vq_->WriteDescriptor(1, kIndirectTable, 16 * kSize, kDescFIndirect, 0);
  vq_->MakeAvailable(0);
  ExpectDroppedAndReturned(0);
}

TEST_F(QueueTest, IndirectDescriptors) {
  queue_.indirect_desc = true;
  vq_->WriteDescriptorAt(kIndirectTable, 0, kData, 16, kDescFNext, 1);
  vq_->WriteDescriptorAt(kIndirectTable, 1, kData + 0x100, 512,
                         kDescFNext | kDescFWrite, 2);
  vq_->WriteDescriptorAt(kIndirectTable, 2, kData + 0x400, 1, kDescFWrite, 0);
  // §2.7.5.3.2: the device ignores WRITE on the descriptor of the table.
  vq_->WriteDescriptor(7, kIndirectTable, 48, kDescFIndirect | kDescFWrite,
                       0);
  vq_->MakeAvailable(7);
  std::optional<DescriptorChain> chain = queue_.Pop(*mem_);
  ASSERT_TRUE(chain.has_value());
  EXPECT_EQ(chain->head_index(), 7);
  ASSERT_EQ(chain->readable().size(), 1u);
  ASSERT_EQ(chain->writable().size(), 2u);
  EXPECT_EQ(chain->readable()[0].addr, kData);
  EXPECT_EQ(chain->writable()[0].addr, kData + 0x100);
  EXPECT_EQ(chain->writable()[1].addr, kData + 0x400);

  // A direct descriptor may precede the indirect one.
  vq_->WriteDescriptor(8, kData + 0x800, 4, kDescFNext, 9);
  vq_->WriteDescriptor(9, kIndirectTable, 48, kDescFIndirect, 0);
  vq_->MakeAvailable(8);
  chain = queue_.Pop(*mem_);
  ASSERT_TRUE(chain.has_value());
  EXPECT_EQ(chain->readable().size(), 2u);
  EXPECT_EQ(chain->writable_bytes(), 513u);
}

TEST_F(QueueTest, IndirectDescriptorsNeedTheFeature) {
  vq_->WriteDescriptorAt(kIndirectTable, 0, kData, 16, 0, 0);
  vq_->WriteDescriptor(0, kIndirectTable, 16, kDescFIndirect, 0);
  vq_->MakeAvailable(0);
  ExpectDroppedAndReturned(0);
}

TEST_F(QueueTest, MalformedIndirectTablesDropTheChain) {
  queue_.indirect_desc = true;
  // Length not a multiple of 16.
  vq_->WriteDescriptor(0, kIndirectTable, 20, kDescFIndirect, 0);
  vq_->MakeAvailable(0);
  ExpectDroppedAndReturned(0);
  // Empty.
  vq_->WriteDescriptor(1, kIndirectTable, 0, kDescFIndirect, 0);
  vq_->MakeAvailable(1);
  ExpectDroppedAndReturned(1);
  // More entries than the queue has.
  vq_->WriteDescriptor(2, kIndirectTable, 16 * (kSize + 1), kDescFIndirect, 0);
  vq_->MakeAvailable(2);
  ExpectDroppedAndReturned(2);
  // INDIRECT together with NEXT.
  vq_->WriteDescriptorAt(kIndirectTable, 0, kData, 16, 0, 0);
  vq_->WriteDescriptor(3, kIndirectTable, 16, kDescFIndirect | kDescFNext, 4);
  vq_->WriteDescriptor(4, kData, 16, 0, 0);
  vq_->MakeAvailable(3);
  ExpectDroppedAndReturned(3);
  // Table outside RAM.
  vq_->WriteDescriptor(5, kRamBytes - 16, 32, kDescFIndirect, 0);
  vq_->MakeAvailable(5);
  ExpectDroppedAndReturned(5);
  // Nested indirect.
  vq_->WriteDescriptorAt(kIndirectTable, 0, kIndirectTable + 0x100, 16,
                         kDescFIndirect, 0);
  vq_->WriteDescriptor(6, kIndirectTable, 16, kDescFIndirect, 0);
  vq_->MakeAvailable(6);
  ExpectDroppedAndReturned(6);
  // A loop inside the table.
  vq_->WriteDescriptorAt(kIndirectTable, 0, kData, 16, kDescFNext, 1);
  vq_->WriteDescriptorAt(kIndirectTable, 1, kData, 16, kDescFNext, 0);
  vq_->WriteDescriptor(7, kIndirectTable, 32, kDescFIndirect, 0);
  vq_->MakeAvailable(7);
  ExpectDroppedAndReturned(7);
  // next beyond the table.
  vq_->WriteDescriptorAt(kIndirectTable, 0, kData, 16, kDescFNext, 2);
  vq_->WriteDescriptor(8, kIndirectTable, 32, kDescFIndirect, 0);
  vq_->MakeAvailable(8);
  ExpectDroppedAndReturned(8);
  // A buffer in the table outside RAM.
  vq_->WriteDescriptorAt(kIndirectTable, 0, kRamBytes, 16, 0, 0);
  vq_->WriteDescriptor(9, kIndirectTable, 16, kDescFIndirect, 0);
  vq_->MakeAvailable(9);
  ExpectDroppedAndReturned(9);
}

TEST_F(QueueTest, InterruptUnlessTheDriverSuppressesIt) {
  EXPECT_FALSE(queue_.NeedsInterrupt(*mem_));  // nothing used yet
  uint16_t head = vq_->Post({{kData, 4, true}});
  ASSERT_TRUE(queue_.Pop(*mem_).has_value());
  ASSERT_TRUE(queue_.AddUsed(*mem_, head, 4).ok());
  EXPECT_TRUE(queue_.NeedsInterrupt(*mem_));
  EXPECT_FALSE(queue_.NeedsInterrupt(*mem_));  // nothing new since

  vq_->SetAvailFlags(kAvailFNoInterrupt);
  head = vq_->Post({{kData, 4, true}});
  ASSERT_TRUE(queue_.Pop(*mem_).has_value());
  ASSERT_TRUE(queue_.AddUsed(*mem_, head, 4).ok());
  EXPECT_FALSE(queue_.NeedsInterrupt(*mem_));
}

TEST_F(QueueTest, EventIdxInterruptsOnlyWhenUsedEventIsCrossed) {
  queue_.event_idx = true;
  // NO_INTERRUPT is ignored with event idx (§2.7.7.2).
  vq_->SetAvailFlags(kAvailFNoInterrupt);
  // The driver wants an interrupt once used entry 2 is written.
  vq_->SetUsedEvent(2);
  for (int i = 0; i < 4; ++i) vq_->Post({{kData + 0x10u * i, 4, true}});

  std::vector<bool> interrupts;
  for (int i = 0; i < 4; ++i) {
    std::optional<DescriptorChain> chain = queue_.Pop(*mem_);
    ASSERT_TRUE(chain.has_value());
    ASSERT_TRUE(queue_.AddUsed(*mem_, chain->head_index(), 4).ok());
    interrupts.push_back(queue_.NeedsInterrupt(*mem_));
  }
  EXPECT_EQ(interrupts, (std::vector<bool>{false, false, true, false}));

  // A batch that jumps over used_event still interrupts once.
  vq_->SetUsedEvent(5);
  for (int i = 0; i < 3; ++i) vq_->Post({{kData, 4, true}});
  while (std::optional<DescriptorChain> chain = queue_.Pop(*mem_)) {
    ASSERT_TRUE(queue_.AddUsed(*mem_, chain->head_index(), 4).ok());
  }
  EXPECT_TRUE(queue_.NeedsInterrupt(*mem_));
}

TEST_F(QueueTest, EventIdxPublishesAvailEventWhenTheRingRunsDry) {
  queue_.event_idx = true;
  vq_->Post({{kData, 4, true}});
  vq_->Post({{kData, 4, true}});
  ASSERT_TRUE(queue_.Pop(*mem_).has_value());
  ASSERT_TRUE(queue_.Pop(*mem_).has_value());
  EXPECT_EQ(vq_->AvailEvent(), 0);  // not yet idle
  EXPECT_FALSE(queue_.Pop(*mem_).has_value());
  // "Kick me when you make entry 2 available."
  EXPECT_EQ(vq_->AvailEvent(), 2);
}

TEST_F(QueueTest, ValidateChecksSizeAlignmentAndPlacement) {
  Queue q(kSize);
  vq_->Configure(q);
  EXPECT_TRUE(q.Validate(*mem_).ok());
  q.size = 12;  // not a power of 2
  EXPECT_FALSE(q.Validate(*mem_).ok());
  q.size = 32;  // above max
  EXPECT_FALSE(q.Validate(*mem_).ok());
  q.size = 0;
  EXPECT_FALSE(q.Validate(*mem_).ok());
  vq_->Configure(q);
  q.desc_table += 8;  // needs 16-byte alignment
  EXPECT_FALSE(q.Validate(*mem_).ok());
  vq_->Configure(q);
  q.used_ring += 2;  // needs 4-byte alignment
  EXPECT_FALSE(q.Validate(*mem_).ok());
  vq_->Configure(q);
  q.avail_ring = kRamBytes - 16;  // runs past the end of RAM
  EXPECT_FALSE(q.Validate(*mem_).ok());
  vq_->Configure(q);
  q.used_ring = kMmioHoleStart;
  EXPECT_FALSE(q.Validate(*mem_).ok());
}

}  // namespace
}  // namespace sbx::vmm::virtio
