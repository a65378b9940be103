#include "base/event_fd.h"

#include <poll.h>

#include "gtest/gtest.h"

namespace sbx {
namespace {

TEST(EventFdTest, SignalsAddUpAndConsumeResets) {
  absl::StatusOr<EventFd> efd = EventFd::Create();
  ASSERT_TRUE(efd.ok()) << efd.status();
  EXPECT_EQ(*efd->Consume(), 0u);  // non-blocking when empty
  ASSERT_TRUE(efd->Signal().ok());
  ASSERT_TRUE(efd->Signal(2).ok());
  EXPECT_EQ(*efd->Consume(), 3u);
  EXPECT_EQ(*efd->Consume(), 0u);
}

TEST(EventFdTest, BecomesReadableWhenSignalled) {
  absl::StatusOr<EventFd> efd = EventFd::Create();
  ASSERT_TRUE(efd.ok());
  struct pollfd p = {.fd = efd->fd(), .events = POLLIN, .revents = 0};
  EXPECT_EQ(::poll(&p, 1, 0), 0);
  ASSERT_TRUE(efd->Signal().ok());
  EXPECT_EQ(::poll(&p, 1, 0), 1);
}

}  // namespace
}  // namespace sbx
