#include "guest/frame.h"

#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "base/unique_fd.h"
#include "gtest/gtest.h"
#include "guest/protocol.h"

namespace sbx::agent {
namespace {

class FrameTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int fds[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    a_.reset(fds[0]);
    b_.reset(fds[1]);
  }
  void WriteRaw(const std::string& bytes) {
    ASSERT_EQ(write(a_.get(), bytes.data(), bytes.size()),
              static_cast<ssize_t>(bytes.size()));
  }
  UniqueFd a_, b_;
};

TEST_F(FrameTest, RoundTrip) {
  Request sent;
  sent.mutable_exec()->add_argv("echo");
  sent.mutable_exec()->set_stdin(std::string(100000, 'z'));
  ASSERT_TRUE(WriteFrame(a_.get(), sent).ok());
  Request got;
  absl::StatusOr<bool> read = ReadFrame(b_.get(), got);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(*read);
  EXPECT_EQ(got.exec().argv(0), "echo");
  EXPECT_EQ(got.exec().stdin(), sent.exec().stdin());
}

TEST_F(FrameTest, EndOfStreamBetweenFramesIsClean) {
  a_.reset();
  Request got;
  absl::StatusOr<bool> read = ReadFrame(b_.get(), got);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_FALSE(*read);
}

TEST_F(FrameTest, EndOfStreamInsideAFrameIsDataLoss) {
  WriteRaw(std::string("\x10\0\0\0abc", 7));
  a_.reset();
  Request got;
  EXPECT_EQ(ReadFrame(b_.get(), got).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST_F(FrameTest, EndOfStreamInsideTheHeaderIsDataLoss) {
  WriteRaw(std::string("\x10\0", 2));
  a_.reset();
  Request got;
  EXPECT_EQ(ReadFrame(b_.get(), got).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST_F(FrameTest, OversizedLengthIsRefusedBeforeReading) {
  uint32_t size = kMaxFrameBytes + 1;
  std::string header(4, '\0');
  for (int i = 0; i < 4; ++i) header[i] = static_cast<char>(size >> (8 * i));
  WriteRaw(header);
  Request got;
  EXPECT_EQ(ReadFrame(b_.get(), got).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(FrameTest, GarbageDoesNotParse) {
  WriteRaw(std::string("\x04\0\0\0\xff\xff\xff\xff", 8));
  Request got;
  EXPECT_EQ(ReadFrame(b_.get(), got).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(FrameTest, OversizedMessageIsNotSent) {
  Request sent;
  sent.mutable_chunk()->set_data(std::string(kMaxFrameBytes + 1, 'x'));
  EXPECT_EQ(WriteFrame(a_.get(), sent).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(FrameTest, WriteToAVanishedPeerIsAnError) {
  b_.reset();
  Request sent;
  sent.mutable_ping();
  // MSG_NOSIGNAL: an error, not a SIGPIPE that kills the test.
  EXPECT_FALSE(WriteFrame(a_.get(), sent).ok());
}

}  // namespace
}  // namespace sbx::agent
