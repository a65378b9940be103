#include "base/unique_fd.h"

#include <unistd.h>

namespace sbx {

void UniqueFd::reset(int fd) {
  if (fd_ >= 0 && fd_ != fd) {
    // Never retry close() on EINTR: on Linux the descriptor is released
    // whatever close() returns, and a retry could close a descriptor that
    // another thread has just been given.
    ::close(fd_);
  }
  fd_ = fd;
}

}  // namespace sbx
