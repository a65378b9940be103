#include "base/logging.h"

#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sbx {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::StartsWith;

// Captures log lines for the duration of a test.
class LogCapture {
 public:
  LogCapture() {
    SetLogSink([this](LogLevel, std::string_view line) {
      absl::MutexLock lock(&mu_);
      lines_.emplace_back(line);
    });
  }
  ~LogCapture() { SetLogSink(nullptr); }
  std::vector<std::string> lines() {
    absl::MutexLock lock(&mu_);
    return lines_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> lines_ ABSL_GUARDED_BY(mu_);
};

class LoggingTest : public ::testing::Test {
 protected:
  void SetUp() override { saved_ = MinLogLevel(); }
  void TearDown() override { SetMinLogLevel(saved_); }
  LogLevel saved_;
};

TEST_F(LoggingTest, LineHasLevelTimeSourceAndText) {
  LogCapture capture;
  SBX_LOG(WARNING) << "disk " << 3 << " is slow";
  std::vector<std::string> lines = capture.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0],
              MatchesRegex("W[0-9]{4} [0-9:.]{15} [0-9]+ logging_test\\.cc:"
                           "[0-9]+\\] disk 3 is slow\n"));
}

TEST_F(LoggingTest, MessagesBelowMinimumAreDroppedUnevaluated) {
  LogCapture capture;
  SetMinLogLevel(LogLevel::kWarning);
  int evaluated = 0;
  auto count = [&] { return ++evaluated; };
  SBX_LOG(INFO) << "hidden " << count();
  SBX_LOG(ERROR) << "shown " << count();
  std::vector<std::string> lines = capture.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], StartsWith("E"));
  EXPECT_THAT(lines[0], HasSubstr("shown 1"));
  EXPECT_EQ(evaluated, 1);
}

TEST_F(LoggingTest, LogIsASingleStatementInIfElse) {
  LogCapture capture;
  bool flag = false;
  if (flag)
    SBX_LOG(INFO) << "then";
  else
    SBX_LOG(INFO) << "else";
  std::vector<std::string> lines = capture.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], HasSubstr("] else"));
}

TEST_F(LoggingTest, ParseLogLevel) {
  EXPECT_EQ(*ParseLogLevel("DEBUG"), LogLevel::kDebug);
  EXPECT_EQ(*ParseLogLevel("warn"), LogLevel::kWarning);
  EXPECT_EQ(*ParseLogLevel("error"), LogLevel::kError);
  absl::StatusOr<LogLevel> bad = ParseLogLevel("loud");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("'loud'"));
}

TEST_F(LoggingTest, EveryNSecLetsOneThroughAndCountsTheRest) {
  LogCapture capture;
  for (int i = 0; i < 1000; ++i) {
    SBX_LOG_EVERY_N_SEC(WARNING, 3600) << "flood " << i;
  }
  std::vector<std::string> lines = capture.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], HasSubstr("flood 0"));
}

TEST(RateLimiterTest, ReportsSuppressedCountOnNextAllowedMessage) {
  internal::RateLimiter limiter(/*period_seconds=*/0.0);
  uint64_t suppressed = 99;
  EXPECT_TRUE(limiter.Allow(&suppressed));
  EXPECT_EQ(suppressed, 0u);

  internal::RateLimiter slow(/*period_seconds=*/3600);
  EXPECT_TRUE(slow.Allow(&suppressed));
  EXPECT_FALSE(slow.Allow(&suppressed));
  EXPECT_FALSE(slow.Allow(&suppressed));
}

TEST_F(LoggingTest, ConcurrentLinesStayWhole) {
  LogCapture capture;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t] {
      for (int i = 0; i < 100; ++i) SBX_LOG(INFO) << "thread " << t << " line " << i;
    });
  }
  for (std::thread& th : threads) th.join();
  std::vector<std::string> lines = capture.lines();
  ASSERT_EQ(lines.size(), 400u);
  for (const std::string& line : lines) {
    EXPECT_THAT(line, MatchesRegex(".*\\] thread [0-3] line [0-9]+\n"));
  }
}

TEST(LoggingDeathTest, CheckFailureAbortsWithTheCondition) {
  int x = 1;
  EXPECT_DEATH(SBX_CHECK(x == 2) << "x was " << x,
               "Check failed: x == 2 x was 1");
}

}  // namespace
}  // namespace sbx
