#include "base/event_loop.h"

#include <sys/epoll.h>

#include <cerrno>
#include <utility>

#include "base/status.h"

namespace sbx {

absl::StatusOr<std::unique_ptr<EventLoop>> EventLoop::Create() {
  UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll.valid()) return ErrnoStatus("epoll_create1", errno);
  absl::StatusOr<EventFd> stop = EventFd::Create();
  if (!stop.ok()) return stop.status();
  epoll_event ev = {};
  ev.events = EPOLLIN;
  ev.data.fd = stop->fd();
  if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, stop->fd(), &ev) != 0) {
    return ErrnoStatus("epoll_ctl ADD", errno);
  }
  return std::unique_ptr<EventLoop>(
      new EventLoop(std::move(epoll), std::move(*stop)));
}

absl::Status EventLoop::Add(int fd, std::function<void()> handler) {
  absl::MutexLock lock(&mu_);
  epoll_event ev = {};
  ev.events = EPOLLIN;
  ev.data.fd = fd;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
    return ErrnoStatus("epoll_ctl ADD", errno);
  }
  handlers_[fd] = std::make_shared<std::function<void()>>(std::move(handler));
  return absl::OkStatus();
}

absl::Status EventLoop::Remove(int fd) {
  absl::MutexLock lock(&mu_);
  if (handlers_.erase(fd) == 0) {
    return absl::NotFoundError("fd " + std::to_string(fd) + " is not in the loop");
  }
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr) != 0) {
    return ErrnoStatus("epoll_ctl DEL", errno);
  }
  return absl::OkStatus();
}

absl::Status EventLoop::Run() {
  epoll_event events[16];
  for (;;) {
    int n = ::epoll_wait(epoll_.get(), events, 16, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("epoll_wait", errno);
    }
    for (int i = 0; i < n; ++i) {
      int fd = events[i].data.fd;
      if (fd == stop_.fd()) {
        (void)stop_.Consume();
        return absl::OkStatus();
      }
      std::shared_ptr<std::function<void()>> handler;
      {
        absl::MutexLock lock(&mu_);
        auto it = handlers_.find(fd);
        if (it == handlers_.end()) continue;  // removed meanwhile
        handler = it->second;
      }
      (*handler)();
    }
  }
}

void EventLoop::Stop() { (void)stop_.Signal(); }

}  // namespace sbx
