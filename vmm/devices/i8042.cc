#include "vmm/devices/i8042.h"

#include <utility>

#include "base/logging.h"

namespace sbx::vmm {
namespace {

constexpr uint64_t kDataPort = 0;
constexpr uint64_t kCommandPort = 4;

constexpr uint8_t kStatusOutputFull = 0x01;
constexpr uint8_t kStatusSystem = 0x04;  // passed self-test

// Controller commands (port 0x64).
constexpr uint8_t kCmdReadCommandByte = 0x20;
constexpr uint8_t kCmdWriteCommandByte = 0x60;
constexpr uint8_t kCmdSelfTest = 0xaa;
constexpr uint8_t kCmdKeyboardTest = 0xab;
constexpr uint8_t kCmdWriteOutputPort = 0xd1;
constexpr uint8_t kCmdPulseResetLine = 0xfe;

}  // namespace

I8042::I8042(std::function<void()> reset) : reset_(std::move(reset)) {}

sbx::vmstate::v1::I8042State I8042::SaveState() const {
  absl::MutexLock lock(&mu_);
  sbx::vmstate::v1::I8042State state;
  state.set_command_byte(command_byte_);
  state.set_pending_command(pending_command_);
  state.set_output(std::string(output_.begin(), output_.end()));
  return state;
}

absl::Status I8042::RestoreState(const sbx::vmstate::v1::I8042State& state) {
  if (state.command_byte() > 0xff || state.pending_command() > 0xff ||
      state.output().size() > kMaxOutput) {
    return absl::InvalidArgumentError("i8042: state out of range");
  }
  absl::MutexLock lock(&mu_);
  command_byte_ = static_cast<uint8_t>(state.command_byte());
  pending_command_ = static_cast<uint8_t>(state.pending_command());
  output_.assign(state.output().begin(), state.output().end());
  return absl::OkStatus();
}

void I8042::Read(uint64_t offset, std::span<uint8_t> data) {
  for (uint8_t& b : data) b = 0xff;
  if (data.size() != 1) return;
  absl::MutexLock lock(&mu_);
  switch (offset) {
    case kDataPort:
      if (output_.empty()) {
        data[0] = 0;
      } else {
        data[0] = output_.front();
        output_.pop_front();
      }
      return;
    case kCommandPort:
      data[0] = kStatusSystem | (output_.empty() ? 0 : kStatusOutputFull);
      return;
    default:
      return;  // 0x61-0x63 belong to other chips: nothing here.
  }
}

void I8042::Write(uint64_t offset, std::span<const uint8_t> data) {
  if (data.size() != 1) return;
  bool reset = false;
  {
    absl::MutexLock lock(&mu_);
    uint8_t value = data[0];
    if (offset == kDataPort) {
      if (pending_command_ == kCmdWriteCommandByte) command_byte_ = value;
      // Output port bit 0 low is the reset line too.
      if (pending_command_ == kCmdWriteOutputPort && !(value & 1)) reset = true;
      pending_command_ = 0;
    } else if (offset == kCommandPort) {
      pending_command_ = 0;
      switch (value) {
        case kCmdReadCommandByte:
          output_.push_back(command_byte_);
          break;
        case kCmdWriteCommandByte:
        case kCmdWriteOutputPort:
          pending_command_ = value;
          break;
        case kCmdSelfTest:
          output_.push_back(0x55);  // passed
          break;
        case kCmdKeyboardTest:
          output_.push_back(0x00);  // no error
          break;
        case kCmdPulseResetLine:
          reset = true;
          break;
        default:
          SBX_LOG_EVERY_N_SEC(DEBUG, 5)
              << "i8042: ignoring command 0x" << std::hex << int{value};
          break;
      }
      // The output buffer holds one byte at a time on real hardware; keep a
      // hostile guest from growing it.
      while (output_.size() > kMaxOutput) output_.pop_front();
    }
  }
  if (reset) reset_();
}

}  // namespace sbx::vmm
