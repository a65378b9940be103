#ifndef SBX_BASE_EVENT_FD_H_
#define SBX_BASE_EVENT_FD_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "base/unique_fd.h"

namespace sbx {

// A Linux eventfd: a 64-bit counter that one side adds to and the other
// reads (and so resets). The VMM uses them for irqfd (device -> guest
// interrupt) and ioeventfd (guest queue kick -> device event loop).
class EventFd {
 public:
  // Non-blocking, close-on-exec.
  static absl::StatusOr<EventFd> Create();

  EventFd(EventFd&&) = default;
  EventFd& operator=(EventFd&&) = default;

  int fd() const { return fd_.get(); }

  // Adds `n` to the counter. Fails only if the descriptor is broken or the
  // counter would overflow.
  absl::Status Signal(uint64_t n = 1) const;

  // Returns the counter and resets it to 0; 0 if it was already 0.
  absl::StatusOr<uint64_t> Consume() const;

 private:
  explicit EventFd(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

}  // namespace sbx

#endif  // SBX_BASE_EVENT_FD_H_
