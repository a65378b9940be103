#ifndef SBX_BASE_EVENT_LOOP_H_
#define SBX_BASE_EVENT_LOOP_H_

#include <functional>
#include <map>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/event_fd.h"
#include "base/unique_fd.h"

namespace sbx {

// An epoll loop: calls a handler when its descriptor becomes readable. The
// VMM runs device work here (virtqueue kicks arrive as ioeventfds), so no
// device work ever runs on, or blocks, a vCPU thread.
class EventLoop {
 public:
  static absl::StatusOr<std::unique_ptr<EventLoop>> Create();

  // Calls `handler` on the loop thread whenever `fd` is readable. The
  // handler must drain what made `fd` readable (level-triggered). `fd` must
  // stay open until removed or the loop is destroyed.
  absl::Status Add(int fd, std::function<void()> handler);
  absl::Status Remove(int fd);

  // Runs handlers until Stop(); returns an error only if epoll itself fails.
  absl::Status Run();
  // Makes Run() return soon; callable from any thread, before or during Run.
  void Stop();

 private:
  EventLoop(UniqueFd epoll, EventFd stop)
      : epoll_(std::move(epoll)), stop_(std::move(stop)) {}

  UniqueFd epoll_;
  EventFd stop_;
  absl::Mutex mu_;
  std::map<int, std::shared_ptr<std::function<void()>>> handlers_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace sbx

#endif  // SBX_BASE_EVENT_LOOP_H_
