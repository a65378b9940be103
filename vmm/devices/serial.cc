#include "vmm/devices/serial.h"

#include <utility>

#include "base/logging.h"

namespace sbx::vmm {
namespace {

// Register offsets (DLAB=0 unless noted).
constexpr uint64_t kData = 0;  // RBR / THR; DLL when DLAB=1
constexpr uint64_t kIer = 1;   // DLM when DLAB=1
constexpr uint64_t kIir = 2;   // read: IIR, write: FCR
constexpr uint64_t kLcr = 3;
constexpr uint64_t kMcr = 4;
constexpr uint64_t kLsr = 5;
constexpr uint64_t kMsr = 6;
constexpr uint64_t kScr = 7;

constexpr uint8_t kIerRdi = 0x01;   // received data available
constexpr uint8_t kIerThri = 0x02;  // THR empty
constexpr uint8_t kIirNone = 0x01;
constexpr uint8_t kIirThri = 0x02;
constexpr uint8_t kIirRdi = 0x04;
constexpr uint8_t kIirFifos = 0xc0;
constexpr uint8_t kLsrDr = 0x01;
constexpr uint8_t kLsrThre = 0x20;
constexpr uint8_t kLsrTemt = 0x40;

}  // namespace

Serial::Serial(std::function<void(std::span<const uint8_t>)> output,
               std::function<void()> interrupt)
    : output_(std::move(output)), interrupt_(std::move(interrupt)) {}

void Serial::Read(uint64_t offset, std::span<uint8_t> data) {
  if (data.size() != 1) {
    // The UART has byte registers; wider reads see nothing.
    for (uint8_t& b : data) b = 0xff;
    return;
  }
  absl::MutexLock lock(&mu_);
  data[0] = ReadRegister(offset);
}

void Serial::Write(uint64_t offset, std::span<const uint8_t> data) {
  if (data.size() != 1) {
    SBX_LOG_EVERY_N_SEC(WARNING, 5)
        << "serial: ignoring " << data.size() << "-byte write at offset " << offset;
    return;
  }
  absl::MutexLock lock(&mu_);
  WriteRegister(offset, data[0]);
}

void Serial::Receive(std::span<const uint8_t> bytes) {
  absl::MutexLock lock(&mu_);
  for (uint8_t b : bytes) {
    if (rx_.size() >= kRxLimit) break;
    rx_.push_back(b);
  }
  UpdateInterrupt();
}

sbx::vmstate::v1::SerialState Serial::SaveState() const {
  absl::MutexLock lock(&mu_);
  sbx::vmstate::v1::SerialState state;
  state.set_ier(ier_);
  state.set_lcr(lcr_);
  state.set_mcr(mcr_);
  state.set_scr(scr_);
  state.set_dll(dll_);
  state.set_dlm(dlm_);
  state.set_fifo_enabled(fifo_enabled_);
  state.set_thre_pending(thre_pending_);
  state.set_rx(std::string(rx_.begin(), rx_.end()));
  return state;
}

absl::Status Serial::RestoreState(const sbx::vmstate::v1::SerialState& state) {
  if (state.ier() > 0x0f || state.lcr() > 0xff || state.mcr() > 0x1f ||
      state.scr() > 0xff || state.dll() > 0xff || state.dlm() > 0xff ||
      state.rx().size() > kRxLimit) {
    return absl::InvalidArgumentError("serial: register value out of range");
  }
  absl::MutexLock lock(&mu_);
  ier_ = static_cast<uint8_t>(state.ier());
  lcr_ = static_cast<uint8_t>(state.lcr());
  mcr_ = static_cast<uint8_t>(state.mcr());
  scr_ = static_cast<uint8_t>(state.scr());
  dll_ = static_cast<uint8_t>(state.dll());
  dlm_ = static_cast<uint8_t>(state.dlm());
  fifo_enabled_ = state.fifo_enabled();
  thre_pending_ = state.thre_pending();
  rx_.assign(state.rx().begin(), state.rx().end());
  return absl::OkStatus();
}

uint8_t Serial::ReadRegister(uint64_t offset) {
  switch (offset) {
    case kData: {
      if (dlab()) return dll_;
      if (rx_.empty()) return 0;
      uint8_t b = rx_.front();
      rx_.pop_front();
      return b;
    }
    case kIer:
      return dlab() ? dlm_ : ier_;
    case kIir: {
      uint8_t iir = PendingInterrupt();
      // Reading IIR acknowledges a THR-empty interrupt it reports.
      if (iir == kIirThri) thre_pending_ = false;
      return iir | (fifo_enabled_ ? kIirFifos : 0);
    }
    case kLcr:
      return lcr_;
    case kMcr:
      return mcr_;
    case kLsr:
      return (rx_.empty() ? 0 : kLsrDr) | kLsrThre | kLsrTemt;
    case kMsr:
      if (loopback()) {
        // Loopback wires RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD.
        return static_cast<uint8_t>(((mcr_ & 0x02) << 3) | ((mcr_ & 0x01) << 5) |
                                    ((mcr_ & 0x04) << 4) | ((mcr_ & 0x08) << 4));
      }
      return 0xb0;  // DCD, DSR, CTS: a line that is always ready
    case kScr:
      return scr_;
    default:
      return 0xff;
  }
}

void Serial::WriteRegister(uint64_t offset, uint8_t value) {
  switch (offset) {
    case kData:
      if (dlab()) {
        dll_ = value;
        return;
      }
      if (loopback()) {
        if (rx_.size() < kRxLimit) rx_.push_back(value);
      } else {
        output_(std::span(&value, 1));
      }
      // The byte left at once: THR is empty again.
      thre_pending_ = true;
      UpdateInterrupt();
      return;
    case kIer:
      if (dlab()) {
        dlm_ = value;
        return;
      }
      // Enabling THRE interrupts while THR is empty raises one at once.
      if ((value & kIerThri) && !(ier_ & kIerThri)) thre_pending_ = true;
      ier_ = value & 0x0f;
      UpdateInterrupt();
      return;
    case kIir:  // FCR
      fifo_enabled_ = value & 0x01;
      if (value & 0x02) rx_.clear();  // clear receive FIFO
      return;
    case kLcr:
      lcr_ = value;
      return;
    case kMcr:
      mcr_ = value & 0x1f;
      return;
    case kScr:
      scr_ = value;
      return;
    default:
      // LSR and MSR are read-only.
      return;
  }
}

uint8_t Serial::PendingInterrupt() const {
  if ((ier_ & kIerRdi) && !rx_.empty()) return kIirRdi;
  if ((ier_ & kIerThri) && thre_pending_) return kIirThri;
  return kIirNone;
}

void Serial::UpdateInterrupt() {
  // The IRQ is an edge into the IOAPIC: pulse it whenever a cause is pending
  // after a state change.
  if (PendingInterrupt() != kIirNone) interrupt_();
}

}  // namespace sbx::vmm
