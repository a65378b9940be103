#include "base/event_loop.h"

#include <atomic>
#include <thread>

#include "gtest/gtest.h"

namespace sbx {
namespace {

TEST(EventLoopTest, RunsHandlersOnTheLoopThreadUntilStopped) {
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop.ok()) << loop.status();
  auto kick = EventFd::Create();
  ASSERT_TRUE(kick.ok());
  std::atomic<uint64_t> seen{0};
  std::thread::id handler_thread;
  ASSERT_TRUE((*loop)->Add(kick->fd(), [&] {
    handler_thread = std::this_thread::get_id();
    seen += *kick->Consume();
    if (seen >= 3) (*loop)->Stop();
  }).ok());
  std::thread runner([&] { EXPECT_TRUE((*loop)->Run().ok()); });
  ASSERT_TRUE(kick->Signal(1).ok());
  ASSERT_TRUE(kick->Signal(2).ok());
  std::thread::id runner_id = runner.get_id();  // empty once joined
  runner.join();
  EXPECT_EQ(seen.load(), 3u);
  EXPECT_EQ(handler_thread, runner_id);
}

TEST(EventLoopTest, StopBeforeRunReturnsAtOnceAndRemovedFdsAreQuiet) {
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop.ok());
  auto kick = EventFd::Create();
  ASSERT_TRUE(kick.ok());
  bool called = false;
  ASSERT_TRUE((*loop)->Add(kick->fd(), [&] { called = true; }).ok());
  ASSERT_TRUE((*loop)->Remove(kick->fd()).ok());
  EXPECT_EQ((*loop)->Remove(kick->fd()).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(kick->Signal().ok());
  (*loop)->Stop();
  EXPECT_TRUE((*loop)->Run().ok());
  EXPECT_FALSE(called);
}

}  // namespace
}  // namespace sbx
