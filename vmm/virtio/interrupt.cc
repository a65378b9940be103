#include "vmm/virtio/interrupt.h"

#include "absl/status/status.h"
#include "base/logging.h"

namespace sbx::vmm::virtio {

void Interrupt::Raise(uint32_t reasons) {
  // The status bit is set before the eventfd fires, so the guest's handler
  // finds it when it reads InterruptStatus.
  status_.fetch_or(reasons);
  absl::Status s = irq_.Signal();
  if (!s.ok()) {
    SBX_LOG_EVERY_N_SEC(ERROR, 1) << "virtio interrupt lost: " << s;
  }
}

void Interrupt::NotifyConfigChange() {
  config_generation_.fetch_add(1);
  Raise(kConfigChange);
}

}  // namespace sbx::vmm::virtio
