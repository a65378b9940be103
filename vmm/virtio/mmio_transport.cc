#include "vmm/virtio/mmio_transport.h"

#include <bit>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/hex.h"
#include "base/logging.h"

namespace sbx::vmm::virtio {
namespace {

constexpr uint32_t kMagicValue = 0x74726976;  // "virt"
constexpr uint32_t kVersion = 2;              // the modern interface
constexpr uint32_t kVendorId = 0x00786273;    // "sbx"

// Register offsets (§4.2.2, table "MMIO Device Register Layout").
constexpr uint64_t kMagicValueReg = 0x000;
constexpr uint64_t kVersionReg = 0x004;
constexpr uint64_t kDeviceIdReg = 0x008;
constexpr uint64_t kVendorIdReg = 0x00c;
constexpr uint64_t kDeviceFeatures = 0x010;
constexpr uint64_t kDeviceFeaturesSel = 0x014;
constexpr uint64_t kDriverFeatures = 0x020;
constexpr uint64_t kDriverFeaturesSel = 0x024;
constexpr uint64_t kQueueSel = 0x030;
constexpr uint64_t kQueueNumMax = 0x034;
constexpr uint64_t kQueueNum = 0x038;
constexpr uint64_t kQueueReady = 0x044;
constexpr uint64_t kQueueNotify = MmioTransport::kQueueNotifyOffset;
constexpr uint64_t kInterruptStatus = 0x060;
constexpr uint64_t kInterruptAck = 0x064;
constexpr uint64_t kStatus = 0x070;
constexpr uint64_t kQueueDescLow = 0x080;
constexpr uint64_t kQueueDescHigh = 0x084;
constexpr uint64_t kQueueDriverLow = 0x090;
constexpr uint64_t kQueueDriverHigh = 0x094;
constexpr uint64_t kQueueDeviceLow = 0x0a0;
constexpr uint64_t kQueueDeviceHigh = 0x0a4;
constexpr uint64_t kShmSel = 0x0ac;
constexpr uint64_t kShmLenLow = 0x0b0;
constexpr uint64_t kShmLenHigh = 0x0b4;
constexpr uint64_t kShmBaseLow = 0x0b8;
constexpr uint64_t kShmBaseHigh = 0x0bc;
constexpr uint64_t kQueueReset = 0x0c0;
constexpr uint64_t kConfigGeneration = 0x0fc;

// Device status bits (§2.1).
constexpr uint32_t kStatusAcknowledge = 1;
constexpr uint32_t kStatusDriver = 2;
constexpr uint32_t kStatusDriverOk = 4;
constexpr uint32_t kStatusFeaturesOk = 8;
constexpr uint32_t kStatusNeedsReset = 64;
constexpr uint32_t kStatusFailed = 128;
constexpr uint32_t kDriverStatusBits = kStatusAcknowledge | kStatusDriver |
                                       kStatusDriverOk | kStatusFeaturesOk |
                                       kStatusFailed;

// What the transport itself supports on every device (Queue implements the
// ring features).
constexpr uint64_t kTransportFeatures =
    kFeatureVersion1 | kFeatureIndirectDesc | kFeatureEventIdx;


// §4.2.2.2: the configuration space takes 8-, 16- and 32-bit accesses,
// aligned to their width.
bool ConfigAccessOk(uint64_t offset, size_t size) {
  return (size == 1 || size == 2 || size == 4) && offset % size == 0 &&
         offset + size <= MmioTransport::kSize;
}

void SetHalf(uint64_t& value, bool high, uint32_t half) {
  if (high) {
    value = (value & 0xffff'ffffULL) | (uint64_t{half} << 32);
  } else {
    value = (value & ~0xffff'ffffULL) | half;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<MmioTransport>> MmioTransport::Create(
    GuestMemory& mem, std::unique_ptr<Device> device, EventFd irq) {
  if (device == nullptr) return absl::InvalidArgumentError("no device");
  std::span<const uint16_t> sizes = device->queue_max_sizes();
  if (sizes.empty()) {
    return absl::InvalidArgumentError("a virtio device needs a queue");
  }
  for (uint16_t size : sizes) {
    if (size == 0 || !std::has_single_bit(size) || size > kMaxQueueSize) {
      return absl::InvalidArgumentError(
          "queue max size " + std::to_string(size) +
          " is not a power of 2 in [1, 32768]");
    }
  }
  return std::unique_ptr<MmioTransport>(
      new MmioTransport(mem, std::move(device), std::move(irq)));
}

MmioTransport::MmioTransport(GuestMemory& mem, std::unique_ptr<Device> device,
                             EventFd irq)
    : mem_(mem), interrupt_(std::move(irq)), device_(std::move(device)) {
  for (uint16_t size : device_->queue_max_sizes()) queues_.emplace_back(size);
}

MmioTransport::~MmioTransport() {
  absl::MutexLock lock(&mu_);
  // The device may hold references to queues_ and interrupt_.
  device_->Reset();
}

uint32_t MmioTransport::status() const {
  absl::MutexLock lock(&mu_);
  return status_;
}

sbx::vmstate::v1::VirtioTransportState MmioTransport::SaveState() const {
  absl::MutexLock lock(&mu_);
  sbx::vmstate::v1::VirtioTransportState state;
  state.set_device_type(device_->device_type());
  state.set_status(status_);
  state.set_activated(activated_);
  state.set_device_features_sel(device_features_sel_);
  state.set_driver_features_sel(driver_features_sel_);
  state.set_driver_features(driver_features_);
  state.set_queue_sel(queue_sel_);
  state.set_interrupt_status(interrupt_.status());
  state.set_config_generation(interrupt_.config_generation());
  for (const Queue& q : queues_) {
    sbx::vmstate::v1::QueueState* qs = state.add_queues();
    qs->set_max_size(q.max_size());
    qs->set_size(q.size);
    qs->set_ready(q.ready);
    qs->set_desc_table(q.desc_table);
    qs->set_avail_ring(q.avail_ring);
    qs->set_used_ring(q.used_ring);
    qs->set_event_idx(q.event_idx);
    qs->set_indirect_desc(q.indirect_desc);
    qs->set_next_avail(q.next_avail);
    qs->set_next_used(q.next_used);
    qs->set_signalled_used(q.signalled_used);
    qs->set_needs_reset(q.needs_reset);
  }
  device_->SaveState(*state.mutable_device());
  return state;
}

absl::Status MmioTransport::RestoreState(
    const sbx::vmstate::v1::VirtioTransportState& state) {
  absl::MutexLock lock(&mu_);
  auto refuse = [&](const std::string& why) {
    ResetDevice();
    return absl::FailedPreconditionError(absl::StrCat(
        "virtio-mmio device type ", device_->device_type(), ": ", why));
  };
  if (state.device_type() != device_->device_type()) {
    return refuse(absl::StrCat("the snapshot has device type ",
                               state.device_type(), " here"));
  }
  if (static_cast<size_t>(state.queues_size()) != queues_.size()) {
    return refuse(absl::StrCat("the snapshot has ", state.queues_size(),
                               " queues, the device ", queues_.size()));
  }
  if ((state.driver_features() & ~OfferedFeatures()) != 0) {
    return refuse(absl::StrCat("the snapshot's features ",
                               Hex(state.driver_features()),
                               " are more than the device offers"));
  }
  for (size_t i = 0; i < queues_.size(); ++i) {
    const sbx::vmstate::v1::QueueState& qs = state.queues(static_cast<int>(i));
    Queue& q = queues_[i];
    if (qs.max_size() != q.max_size() || qs.size() > 0xffff ||
        qs.next_avail() > 0xffff || qs.next_used() > 0xffff ||
        qs.signalled_used() > 0xffff) {
      return refuse(absl::StrCat("queue ", i, " state out of range"));
    }
    q.size = static_cast<uint16_t>(qs.size());
    q.ready = qs.ready();
    q.desc_table = qs.desc_table();
    q.avail_ring = qs.avail_ring();
    q.used_ring = qs.used_ring();
    q.event_idx = qs.event_idx();
    q.indirect_desc = qs.indirect_desc();
    q.next_avail = static_cast<uint16_t>(qs.next_avail());
    q.next_used = static_cast<uint16_t>(qs.next_used());
    q.signalled_used = static_cast<uint16_t>(qs.signalled_used());
    q.needs_reset = qs.needs_reset();
  }
  status_ = state.status();
  device_features_sel_ = state.device_features_sel();
  driver_features_sel_ = state.driver_features_sel();
  driver_features_ = state.driver_features();
  queue_sel_ = state.queue_sel();
  interrupt_.RestoreState(state.interrupt_status(), state.config_generation());
  if (state.activated()) {
    for (size_t i = 0; i < queues_.size(); ++i) {
      if (!queues_[i].ready) continue;
      absl::Status s = queues_[i].Validate(mem_);
      if (!s.ok()) return refuse(absl::StrCat("queue ", i, ": ", s.message()));
    }
    absl::Status s =
        device_->Activate(mem_, driver_features_, queues_, interrupt_);
    if (!s.ok()) return refuse(absl::StrCat("activating: ", s.message()));
    activated_ = true;
  }
  absl::Status s = device_->RestoreState(state.device());
  if (!s.ok()) return refuse(std::string(s.message()));
  return absl::OkStatus();
}

bool MmioTransport::activated() const {
  absl::MutexLock lock(&mu_);
  return activated_;
}

void MmioTransport::Read(uint64_t offset, std::span<uint8_t> data) {
  absl::MutexLock lock(&mu_);
  if (offset >= kConfigOffset) {
    if (!ConfigAccessOk(offset, data.size())) {
      SBX_LOG_EVERY_N_SEC(WARNING, 1)
          << "virtio-mmio: ignoring " << data.size()
          << "-byte config read at " << Hex(offset);
      std::memset(data.data(), 0, data.size());
      return;
    }
    device_->ReadConfig(offset - kConfigOffset, data);
    return;
  }
  if (data.size() != 4 || offset % 4 != 0) {
    SBX_LOG_EVERY_N_SEC(WARNING, 1)
        << "virtio-mmio: ignoring " << data.size() << "-byte read at "
        << Hex(offset) << " (registers are aligned 32-bit)";
    std::memset(data.data(), 0, data.size());
    return;
  }
  uint32_t value = ReadRegister(offset);
  std::memcpy(data.data(), &value, sizeof(value));
}

void MmioTransport::Write(uint64_t offset, std::span<const uint8_t> data) {
  absl::MutexLock lock(&mu_);
  if (offset >= kConfigOffset) {
    if (!ConfigAccessOk(offset, data.size())) {
      SBX_LOG_EVERY_N_SEC(WARNING, 1)
          << "virtio-mmio: ignoring " << data.size()
          << "-byte config write at " << Hex(offset);
      return;
    }
    device_->WriteConfig(offset - kConfigOffset, data);
    return;
  }
  if (data.size() != 4 || offset % 4 != 0) {
    SBX_LOG_EVERY_N_SEC(WARNING, 1)
        << "virtio-mmio: ignoring " << data.size() << "-byte write at "
        << Hex(offset) << " (registers are aligned 32-bit)";
    return;
  }
  uint32_t value;
  std::memcpy(&value, data.data(), sizeof(value));
  WriteRegister(offset, value);
}

void MmioTransport::NotifyQueue(uint32_t index) {
  absl::MutexLock lock(&mu_);
  ProcessQueue(index);
}

Queue* MmioTransport::SelectedQueue() {
  return queue_sel_ < queues_.size() ? &queues_[queue_sel_] : nullptr;
}

Queue* MmioTransport::WritableQueue(uint64_t offset) {
  Queue* q = SelectedQueue();
  // §4.2.3.2: queues are configured after FEATURES_OK and before
  // DRIVER_OK, and a queue's size and addresses only while it is not
  // ready (§4.2.2.3).
  bool configuring = (status_ & kStatusFeaturesOk) &&
                     !(status_ & (kStatusDriverOk | kStatusFailed));
  if (q == nullptr || !configuring ||
      (q->ready && offset != kQueueReady)) {
    SBX_LOG_EVERY_N_SEC(WARNING, 1)
        << "virtio-mmio: ignoring write to queue register " << Hex(offset)
        << " (queue " << queue_sel_ << ", status " << Hex(status_) << ")";
    return nullptr;
  }
  return q;
}

uint64_t MmioTransport::OfferedFeatures() const {
  return device_->device_features() | kTransportFeatures;
}

uint32_t MmioTransport::ReadRegister(uint64_t offset) {
  switch (offset) {
    case kMagicValueReg:
      return kMagicValue;
    case kVersionReg:
      return kVersion;
    case kDeviceIdReg:
      return device_->device_type();
    case kVendorIdReg:
      return kVendorId;
    case kDeviceFeatures: {
      uint64_t features = OfferedFeatures();
      if (device_features_sel_ == 0) return static_cast<uint32_t>(features);
      if (device_features_sel_ == 1) return features >> 32;
      return 0;
    }
    case kQueueNumMax: {
      // §4.2.2: 0 for a queue that does not exist.
      Queue* q = SelectedQueue();
      return q == nullptr ? 0 : q->max_size();
    }
    case kQueueReady: {
      Queue* q = SelectedQueue();
      return q != nullptr && q->ready ? 1 : 0;
    }
    case kInterruptStatus:
      return interrupt_.status();
    case kStatus:
      return status_;
    case kConfigGeneration:
      return interrupt_.config_generation();
    case kShmLenLow:
    case kShmLenHigh:
    case kShmBaseLow:
    case kShmBaseHigh:
      // §4.2.2: a shared memory region that does not exist has length -1
      // (we have none).
      return 0xffff'ffff;
    case kQueueReset:
      return 0;
    default:
      SBX_LOG_EVERY_N_SEC(WARNING, 1)
          << "virtio-mmio: read of unknown or write-only register "
          << Hex(offset);
      return 0;
  }
}

void MmioTransport::WriteRegister(uint64_t offset, uint32_t value) {
  switch (offset) {
    case kDeviceFeaturesSel:
      device_features_sel_ = value;
      return;
    case kDriverFeatures:
      // §3.1.1: features are written after DRIVER and before FEATURES_OK.
      if (!(status_ & kStatusDriver) || (status_ & kStatusFeaturesOk) ||
          driver_features_sel_ > 1) {
        SBX_LOG_EVERY_N_SEC(WARNING, 1)
            << "virtio-mmio: ignoring DriverFeatures write (select "
            << driver_features_sel_ << ", status " << Hex(status_) << ")";
        return;
      }
      SetHalf(driver_features_, driver_features_sel_ == 1, value);
      return;
    case kDriverFeaturesSel:
      driver_features_sel_ = value;
      return;
    case kQueueSel:
      queue_sel_ = value;
      return;
    case kQueueNum:
      if (Queue* q = WritableQueue(offset)) {
        // A size that does not fit is kept as 0, which Validate refuses.
        q->size = value <= 0xffff ? static_cast<uint16_t>(value) : 0;
      }
      return;
    case kQueueReady:
      if (Queue* q = WritableQueue(offset)) q->ready = (value & 1) != 0;
      return;
    case kQueueNotify:
      ProcessQueue(value);
      return;
    case kInterruptAck:
      interrupt_.Acknowledge(value);
      return;
    case kStatus:
      SetStatus(value);
      return;
    case kQueueDescLow:
    case kQueueDescHigh:
      if (Queue* q = WritableQueue(offset)) {
        SetHalf(q->desc_table, offset == kQueueDescHigh, value);
      }
      return;
    case kQueueDriverLow:
    case kQueueDriverHigh:
      if (Queue* q = WritableQueue(offset)) {
        SetHalf(q->avail_ring, offset == kQueueDriverHigh, value);
      }
      return;
    case kQueueDeviceLow:
    case kQueueDeviceHigh:
      if (Queue* q = WritableQueue(offset)) {
        SetHalf(q->used_ring, offset == kQueueDeviceHigh, value);
      }
      return;
    case kShmSel:
      return;  // there are no regions to select
    default:
      SBX_LOG_EVERY_N_SEC(WARNING, 1)
          << "virtio-mmio: write of unknown or read-only register "
          << Hex(offset);
      return;
  }
}

void MmioTransport::SetStatus(uint32_t value) {
  // §2.4.2 / §4.2.2.1: writing 0 resets the device.
  if (value == 0) {
    ResetDevice();
    return;
  }
  // Drivers write back the status they read with a bit added, so
  // DEVICE_NEEDS_RESET, which only the device sets, may come back; it is
  // not the driver's to change.
  uint32_t requested = value & ~kStatusNeedsReset;
  uint32_t current = status_ & kDriverStatusBits;
  uint32_t added = requested & ~current;
  const char* refusal = nullptr;
  if (requested & ~kDriverStatusBits) {
    refusal = "unknown status bits";
  } else if (current & ~requested) {
    refusal = "status bits cleared without a reset";
  } else if (current & kStatusFailed) {
    refusal = "driver already set FAILED";
  } else if ((added & kStatusDriver) &&
             !(requested & kStatusAcknowledge)) {
    refusal = "DRIVER before ACKNOWLEDGE";
  } else if ((added & kStatusFeaturesOk) && !(requested & kStatusDriver)) {
    refusal = "FEATURES_OK before DRIVER";
  } else if ((added & kStatusDriverOk) && !(requested & kStatusFeaturesOk)) {
    refusal = "DRIVER_OK before FEATURES_OK";
  }
  if (refusal != nullptr) {
    SBX_LOG_EVERY_N_SEC(WARNING, 1)
        << "virtio-mmio: ignoring status write " << Hex(value) << " over "
        << Hex(status_) << ": " << refusal;
    return;
  }

  if (added & kStatusFeaturesOk) {
    // §3.1.1 step 5-6: FEATURES_OK sticks only if the device accepts the
    // driver's features: a subset of those offered, with VERSION_1 (this
    // is a modern-only device, §6.1).
    uint64_t unknown = driver_features_ & ~OfferedFeatures();
    if (unknown != 0 || !(driver_features_ & kFeatureVersion1)) {
      SBX_LOG_EVERY_N_SEC(WARNING, 1)
          << "virtio-mmio: refusing features " << Hex(driver_features_)
          << " (offered " << Hex(OfferedFeatures()) << ")";
      requested &= ~(kStatusFeaturesOk | kStatusDriverOk);
      added &= ~(kStatusFeaturesOk | kStatusDriverOk);
    }
  }
  status_ = (status_ & kStatusNeedsReset) | requested;
  if (added & kStatusFailed) {
    SBX_LOG(INFO) << "virtio-mmio: driver set FAILED (device type "
                  << device_->device_type() << ")";
  }
  if (added & kStatusDriverOk) Activate();
}

void MmioTransport::Activate() {
  for (size_t i = 0; i < queues_.size(); ++i) {
    Queue& q = queues_[i];
    q.event_idx = (driver_features_ & kFeatureEventIdx) != 0;
    q.indirect_desc = (driver_features_ & kFeatureIndirectDesc) != 0;
    if (!q.ready) continue;
    absl::Status s = q.Validate(mem_);
    if (!s.ok()) {
      SBX_LOG_EVERY_N_SEC(WARNING, 1)
          << "virtio-mmio: queue " << i << " unusable: " << s.message();
      SetNeedsReset();
      return;
    }
  }
  absl::Status s =
      device_->Activate(mem_, driver_features_, queues_, interrupt_);
  if (!s.ok()) {
    SBX_LOG_EVERY_N_SEC(WARNING, 1)
        << "virtio-mmio: activating device type " << device_->device_type()
        << ": " << s;
    SetNeedsReset();
    return;
  }
  activated_ = true;
}

void MmioTransport::ProcessQueue(uint32_t index) {
  if (!activated_ || (status_ & kStatusNeedsReset)) {
    SBX_LOG_EVERY_N_SEC(WARNING, 1)
        << "virtio-mmio: ignoring kick of queue " << index
        << " on an inactive device (status " << Hex(status_) << ")";
    return;
  }
  if (index >= queues_.size() || !queues_[index].ready) {
    SBX_LOG_EVERY_N_SEC(WARNING, 1)
        << "virtio-mmio: ignoring kick of missing or unready queue " << index;
    return;
  }
  device_->ProcessQueue(index);
  if (queues_[index].needs_reset) SetNeedsReset();
}

void MmioTransport::SetNeedsReset() {
  if (status_ & kStatusNeedsReset) return;
  status_ |= kStatusNeedsReset;
  // §2.1.2: with DRIVER_OK set, the device must send a configuration
  // change notification after setting DEVICE_NEEDS_RESET.
  if (status_ & kStatusDriverOk) interrupt_.Raise(Interrupt::kConfigChange);
}

void MmioTransport::ResetDevice() {
  device_->Reset();
  for (Queue& q : queues_) q.Reset();
  status_ = 0;
  activated_ = false;
  device_features_sel_ = 0;
  driver_features_sel_ = 0;
  driver_features_ = 0;
  queue_sel_ = 0;
  // §4.2.2.1: reset clears InterruptStatus (and QueueReady, above).
  interrupt_.Clear();
}

}  // namespace sbx::vmm::virtio
