#include "vmm/virtio/rng/rng.h"

#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <optional>

#include "base/logging.h"
#include "base/status.h"

namespace sbx::vmm::virtio {

void Rng::ReadConfig(uint64_t, std::span<uint8_t> data) const {
  // §5.4.4: no device configuration.
  std::fill(data.begin(), data.end(), 0);
}

void Rng::WriteConfig(uint64_t offset, std::span<const uint8_t>) {
  SBX_LOG_EVERY_N_SEC(WARNING, 1)
      << "virtio-rng: ignoring config write at " << offset;
}

absl::Status Rng::Activate(GuestMemory& mem, uint64_t,
                           std::span<Queue> queues, Interrupt& interrupt) {
  if (queues.size() != 1 || !queues[0].ready) {
    return absl::FailedPreconditionError("virtio-rng: request queue not ready");
  }
  mem_ = &mem;
  queue_ = &queues[0];
  interrupt_ = &interrupt;
  return absl::OkStatus();
}

void Rng::Reset() {
  mem_ = nullptr;
  queue_ = nullptr;
  interrupt_ = nullptr;
}

void Rng::ProcessQueue(size_t) {
  if (queue_ == nullptr) return;
  while (std::optional<DescriptorChain> chain = queue_->Pop(*mem_)) {
    uint32_t written = Fill(*chain);
    absl::Status s = queue_->AddUsed(*mem_, chain->head_index(), written);
    if (!s.ok()) {
      SBX_LOG_EVERY_N_SEC(WARNING, 1) << "virtio-rng: " << s;
      break;
    }
  }
  if (queue_->NeedsInterrupt(*mem_)) interrupt_->Raise(Interrupt::kUsedBuffer);
}

uint32_t Rng::Fill(const DescriptorChain& chain) {
  // §5.4.6: the device only writes; readable buffers carry nothing for it.
  uint32_t written = 0;
  for (const Descriptor& d : chain.writable()) {
    uint32_t want = std::min(d.len, kMaxBytesPerRequest - written);
    if (want == 0) break;
    absl::StatusOr<std::span<uint8_t>> buf = mem_->Slice(d.addr, want);
    if (!buf.ok()) break;
    // getrandom(2) returns at most 32 MiB - 1 bytes per call, and fewer if
    // a signal interrupts a large request: loop.
    std::span<uint8_t> left = *buf;
    while (!left.empty()) {
      ssize_t n = ::getrandom(left.data(), left.size(), 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        SBX_LOG_EVERY_N_SEC(ERROR, 1)
            << "virtio-rng: " << ErrnoStatus("getrandom", errno);
        return written + static_cast<uint32_t>(buf->size() - left.size());
      }
      left = left.subspan(static_cast<size_t>(n));
    }
    written += want;
  }
  return written;
}

void Rng::SaveState(sbx::vmstate::v1::VirtioDeviceState& state) const {
  state.mutable_rng();  // nothing beyond the queue the transport saves
}

absl::Status Rng::RestoreState(
    const sbx::vmstate::v1::VirtioDeviceState& state) {
  if (!state.has_rng()) {
    return absl::FailedPreconditionError(
        "virtio-rng: the snapshot's device is not an entropy device");
  }
  return absl::OkStatus();
}

}  // namespace sbx::vmm::virtio
