#ifndef SBX_VMM_VIRTIO_TESTING_FAKE_DRIVER_H_
#define SBX_VMM_VIRTIO_TESTING_FAKE_DRIVER_H_

// Test-only: the guest driver's side of virtio, written from the spec
// (virtio 1.2 §2.7 split virtqueues, §4.2.2 virtio-mmio registers) rather
// than from the device code, so that tests check one against the other.

#include <atomic>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <span>
#include <vector>

#include "gtest/gtest.h"
#include "vmm/devices/bus.h"
#include "vmm/memory/guest_memory.h"
#include "vmm/virtio/queue.h"

namespace sbx::vmm::virtio::testing {

// One split virtqueue laid out in guest memory as a driver would: the
// descriptor table at `base`, the available ring right after it, the used
// ring at the next 4 KiB boundary. Everything starts zeroed.
class FakeVirtqueue {
 public:
  struct Buffer {
    GuestAddress addr;
    uint32_t len;
    bool writable;
  };
  struct UsedElem {
    uint32_t id;
    uint32_t len;
  };

  FakeVirtqueue(GuestMemory& mem, GuestAddress base, uint16_t size)
      : mem_(mem), size_(size), desc_(base) {
    avail_ = desc_ + 16u * size;
    used_ = (avail_ + 6 + 2u * size + 4095) & ~GuestAddress{4095};
    std::vector<uint8_t> zeros(used_ + 6 + 8u * size - desc_, 0);
    Check(mem_.Write(desc_, zeros));
  }

  uint16_t size() const { return size_; }
  GuestAddress desc_table() const { return desc_; }
  GuestAddress avail_ring() const { return avail_; }
  GuestAddress used_ring() const { return used_; }

  // Programs `queue` as a transport would after the driver's register
  // writes, and marks it ready.
  void Configure(Queue& queue) const {
    queue.size = size_;
    queue.desc_table = desc_;
    queue.avail_ring = avail_;
    queue.used_ring = used_;
    queue.ready = true;
  }

  // Writes descriptor `index` of the table at `table` (the queue's own by
  // default; or an indirect table).
  void WriteDescriptor(uint16_t index, uint64_t addr, uint32_t len,
                       uint16_t flags, uint16_t next) {
    WriteDescriptorAt(desc_, index, addr, len, flags, next);
  }
  void WriteDescriptorAt(GuestAddress table, uint16_t index, uint64_t addr,
                         uint32_t len, uint16_t flags, uint16_t next) {
    uint8_t raw[16];
    std::memcpy(raw, &addr, 8);
    std::memcpy(raw + 8, &len, 4);
    std::memcpy(raw + 12, &flags, 2);
    std::memcpy(raw + 14, &next, 2);
    Check(mem_.Write(table + 16u * index, raw));
  }

  // Writes `buffers` as a chain into the next free descriptors (taken
  // round-robin) and returns its head.
  uint16_t WriteChain(std::initializer_list<Buffer> buffers) {
    uint16_t head = next_free_;
    size_t i = 0;
    for (const Buffer& b : buffers) {
      uint16_t index = next_free_;
      next_free_ = static_cast<uint16_t>((next_free_ + 1) % size_);
      bool last = ++i == buffers.size();
      uint16_t flags = (b.writable ? kDescFWrite : 0) | (last ? 0 : kDescFNext);
      WriteDescriptor(index, b.addr, b.len, flags, last ? 0 : next_free_);
    }
    return head;
  }

  // Puts `head` in the available ring and publishes it (§2.7.13: ring
  // entry before idx).
  void MakeAvailable(uint16_t head) {
    Check(mem_.WriteObj<uint16_t>(avail_ + 4 + 2u * (avail_idx_ % size_),
                                  head));
    std::atomic_thread_fence(std::memory_order_release);
    SetAvailIdx(static_cast<uint16_t>(avail_idx_ + 1));
  }

  // WriteChain + MakeAvailable.
  uint16_t Post(std::initializer_list<Buffer> buffers) {
    uint16_t head = WriteChain(buffers);
    MakeAvailable(head);
    return head;
  }

  void SetAvailIdx(uint16_t idx) {
    avail_idx_ = idx;
    Check(mem_.WriteObj<uint16_t>(avail_ + 2, idx));
  }
  void SetAvailFlags(uint16_t flags) {
    Check(mem_.WriteObj<uint16_t>(avail_, flags));
  }
  void SetUsedEvent(uint16_t idx) {
    Check(mem_.WriteObj<uint16_t>(avail_ + 4 + 2u * size_, idx));
  }

  uint16_t UsedIdx() const { return Read<uint16_t>(used_ + 2); }
  UsedElem Used(uint16_t i) const {
    return {Read<uint32_t>(used_ + 4 + 8u * (i % size_)),
            Read<uint32_t>(used_ + 8 + 8u * (i % size_))};
  }
  uint16_t AvailEvent() const { return Read<uint16_t>(used_ + 4 + 8u * size_); }

 private:
  static void Check(const absl::Status& s) { EXPECT_TRUE(s.ok()) << s; }
  template <typename T>
  T Read(GuestAddress addr) const {
    absl::StatusOr<T> v = mem_.ReadObj<T>(addr);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : T{};
  }

  GuestMemory& mem_;
  uint16_t size_;
  GuestAddress desc_;
  GuestAddress avail_;
  GuestAddress used_;
  uint16_t next_free_ = 0;
  uint16_t avail_idx_ = 0;
};

// Drives a virtio-mmio register file (§4.2.2) with aligned 32-bit accesses,
// as the Linux virtio_mmio driver does.
class MmioDriver {
 public:
  // Register offsets (§4.2.2).
  static constexpr uint64_t kMagicValue = 0x000;
  static constexpr uint64_t kVersion = 0x004;
  static constexpr uint64_t kDeviceId = 0x008;
  static constexpr uint64_t kVendorId = 0x00c;
  static constexpr uint64_t kDeviceFeatures = 0x010;
  static constexpr uint64_t kDeviceFeaturesSel = 0x014;
  static constexpr uint64_t kDriverFeatures = 0x020;
  static constexpr uint64_t kDriverFeaturesSel = 0x024;
  static constexpr uint64_t kQueueSel = 0x030;
  static constexpr uint64_t kQueueNumMax = 0x034;
  static constexpr uint64_t kQueueNum = 0x038;
  static constexpr uint64_t kQueueReady = 0x044;
  static constexpr uint64_t kQueueNotify = 0x050;
  static constexpr uint64_t kInterruptStatus = 0x060;
  static constexpr uint64_t kInterruptAck = 0x064;
  static constexpr uint64_t kStatus = 0x070;
  static constexpr uint64_t kQueueDescLow = 0x080;
  static constexpr uint64_t kQueueDescHigh = 0x084;
  static constexpr uint64_t kQueueDriverLow = 0x090;
  static constexpr uint64_t kQueueDriverHigh = 0x094;
  static constexpr uint64_t kQueueDeviceLow = 0x0a0;
  static constexpr uint64_t kQueueDeviceHigh = 0x0a4;
  static constexpr uint64_t kConfigGeneration = 0x0fc;
  static constexpr uint64_t kConfig = 0x100;

  // Device status bits (§2.1).
  static constexpr uint32_t kAcknowledge = 1;
  static constexpr uint32_t kDriver = 2;
  static constexpr uint32_t kDriverOk = 4;
  static constexpr uint32_t kFeaturesOk = 8;
  static constexpr uint32_t kNeedsReset = 64;
  static constexpr uint32_t kFailed = 128;

  explicit MmioDriver(BusDevice& dev) : dev_(dev) {}

  uint32_t Read32(uint64_t offset) {
    uint8_t buf[4];
    dev_.Read(offset, buf);
    uint32_t v;
    std::memcpy(&v, buf, 4);
    return v;
  }
  void Write32(uint64_t offset, uint32_t value) {
    uint8_t buf[4];
    std::memcpy(buf, &value, 4);
    dev_.Write(offset, buf);
  }

  uint64_t DeviceFeatures() {
    Write32(kDeviceFeaturesSel, 0);
    uint64_t low = Read32(kDeviceFeatures);
    Write32(kDeviceFeaturesSel, 1);
    return low | (uint64_t{Read32(kDeviceFeatures)} << 32);
  }

  // §3.1.1 steps 1-6: reset, ACKNOWLEDGE, DRIVER, write `features`,
  // FEATURES_OK; returns whether the device kept FEATURES_OK.
  bool Negotiate(uint64_t features) {
    Write32(kStatus, 0);
    Write32(kStatus, kAcknowledge);
    Write32(kStatus, kAcknowledge | kDriver);
    Write32(kDriverFeaturesSel, 0);
    Write32(kDriverFeatures, static_cast<uint32_t>(features));
    Write32(kDriverFeaturesSel, 1);
    Write32(kDriverFeatures, static_cast<uint32_t>(features >> 32));
    Write32(kStatus, kAcknowledge | kDriver | kFeaturesOk);
    return (Read32(kStatus) & kFeaturesOk) != 0;
  }

  // §4.2.3.2: configures queue `index` to use `vq` and sets QueueReady.
  void SetUpQueue(uint32_t index, const FakeVirtqueue& vq) {
    Write32(kQueueSel, index);
    Write32(kQueueNum, vq.size());
    Write64(kQueueDescLow, vq.desc_table());
    Write64(kQueueDriverLow, vq.avail_ring());
    Write64(kQueueDeviceLow, vq.used_ring());
    Write32(kQueueReady, 1);
  }

  // §3.1.1 step 8.
  void DriverOk() { Write32(kStatus, Read32(kStatus) | kDriverOk); }

 private:
  void Write64(uint64_t low_offset, uint64_t value) {
    Write32(low_offset, static_cast<uint32_t>(value));
    Write32(low_offset + 4, static_cast<uint32_t>(value >> 32));
  }

  BusDevice& dev_;
};

}  // namespace sbx::vmm::virtio::testing

#endif  // SBX_VMM_VIRTIO_TESTING_FAKE_DRIVER_H_
