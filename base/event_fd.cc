#include "base/event_fd.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

#include "base/status.h"

namespace sbx {

absl::StatusOr<EventFd> EventFd::Create() {
  UniqueFd fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus("eventfd", errno);
  return EventFd(std::move(fd));
}

absl::Status EventFd::Signal(uint64_t n) const {
  while (::write(fd_.get(), &n, sizeof(n)) != sizeof(n)) {
    if (errno != EINTR) return ErrnoStatus("write eventfd", errno);
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> EventFd::Consume() const {
  uint64_t value = 0;
  while (::read(fd_.get(), &value, sizeof(value)) != sizeof(value)) {
    if (errno == EAGAIN) return 0;
    if (errno != EINTR) return ErrnoStatus("read eventfd", errno);
  }
  return value;
}

}  // namespace sbx
