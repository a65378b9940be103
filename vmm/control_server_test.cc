// The control channel's server and client without a VM (label unit): the
// socket's mode, request/response round trips, and what a malformed or
// hostile client gets (its connection closed, nothing else).
#include "vmm/control_server.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "guest/frame.h"
#include "vmm/control_client.h"

namespace sbx::vmm {
namespace {

namespace control = ::sbx::control::v1;
using ::testing::HasSubstr;

std::string SocketPath(const std::string& name) {
  return ::testing::TempDir() + "ctl_" + std::to_string(::getpid()) + "_" + name;
}

// Answers Stats with a fixed guest size and counts the requests.
class FakeVmm {
 public:
  ControlServer::Handler handler() {
    return [this](const control::Request& request) {
      ++requests_;
      control::Response response;
      if (request.has_stats()) {
        response.mutable_stats()->set_state(control::RUNNING);
        response.mutable_stats()->set_guest_memory_bytes(64 << 20);
      } else if (request.has_pause()) {
        response.set_code(static_cast<int>(absl::StatusCode::kFailedPrecondition));
        response.set_message("not running");
      }
      return response;
    };
  }
  int requests() const { return requests_.load(); }

 private:
  std::atomic<int> requests_{0};
};

// True once the server closed `fd` (read sees the end of the stream).
bool ClosedByPeer(int fd) {
  char byte;
  timeval tv = {.tv_sec = 10, .tv_usec = 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return ::read(fd, &byte, 1) == 0;
}

TEST(ControlServerTest, SocketIsPrivateAndRemovedAtTheEnd) {
  FakeVmm vmm;
  const std::string path = SocketPath("mode");
  {
    auto server = ControlServer::Create(path, vmm.handler());
    ASSERT_TRUE(server.ok()) << server.status();
    struct stat st;
    ASSERT_EQ(::lstat(path.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0600u);
  }
  struct stat st;
  EXPECT_NE(::lstat(path.c_str(), &st), 0);
}

TEST(ControlServerTest, RefusesAPathThatIsNotASocket) {
  const std::string path = SocketPath("file");
  ASSERT_EQ(::close(::open(path.c_str(), O_CREAT | O_WRONLY, 0600)), 0);
  FakeVmm vmm;
  auto server = ControlServer::Create(path, vmm.handler());
  ASSERT_FALSE(server.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(server.status()));
  EXPECT_THAT(server.status().message(), HasSubstr("not a socket"));
  ::unlink(path.c_str());
  auto missing = ControlServer::Create("/nonexistent-dir/x.sock", vmm.handler());
  EXPECT_TRUE(absl::IsInvalidArgument(missing.status())) << missing.status();
}

TEST(ControlServerTest, AnswersRequestsOfSequentialClients) {
  FakeVmm vmm;
  const std::string path = SocketPath("seq");
  auto server = ControlServer::Create(path, vmm.handler());
  ASSERT_TRUE(server.ok()) << server.status();
  for (int i = 0; i < 3; ++i) {
    auto client = ControlClient::Connect(path);
    ASSERT_TRUE(client.ok()) << client.status();
    auto stats = (*client)->Stats();
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_EQ(stats->state(), control::RUNNING);
    EXPECT_EQ(stats->guest_memory_bytes(), uint64_t{64} << 20);
    absl::Status paused = (*client)->Pause();
    EXPECT_TRUE(absl::IsFailedPrecondition(paused)) << paused;
    EXPECT_EQ(paused.message(), "not running");
  }
  EXPECT_EQ(vmm.requests(), 6);
}

TEST(ControlServerTest, AnEmptyRequestIsRefusedButTheConnectionStays) {
  FakeVmm vmm;
  const std::string path = SocketPath("empty");
  auto server = ControlServer::Create(path, vmm.handler());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = ControlClient::Connect(path);
  ASSERT_TRUE(client.ok()) << client.status();
  auto response = (*client)->Call(control::Request());
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(response->message(), HasSubstr("empty request"));
  EXPECT_EQ(vmm.requests(), 0);
  EXPECT_TRUE((*client)->Stats().ok());
}

TEST(ControlServerTest, BadFramesCostOnlyTheConnection) {
  FakeVmm vmm;
  const std::string path = SocketPath("bad");
  auto server = ControlServer::Create(path, vmm.handler());
  ASSERT_TRUE(server.ok()) << server.status();

  // Bytes that are no Request (field 1 with wire type 7 does not exist).
  {
    auto client = ControlClient::Connect(path);
    ASSERT_TRUE(client.ok());
    const char garbage[] = {5, 0, 0, 0, '\x0f', '\xff', '\xff', '\xff', '\xff'};
    ASSERT_EQ(::write((*client)->fd(), garbage, sizeof(garbage)),
              static_cast<ssize_t>(sizeof(garbage)));
    EXPECT_TRUE(ClosedByPeer((*client)->fd()));
  }
  // A frame length over the limit: dropped before anything is allocated.
  {
    auto client = ControlClient::Connect(path);
    ASSERT_TRUE(client.ok());
    const unsigned char huge[] = {0xff, 0xff, 0xff, 0x7f};
    ASSERT_EQ(::write((*client)->fd(), huge, sizeof(huge)), 4);
    EXPECT_TRUE(ClosedByPeer((*client)->fd()));
  }
  // A client that hangs up inside a frame.
  {
    auto client = ControlClient::Connect(path);
    ASSERT_TRUE(client.ok());
    const char partial[] = {100, 0, 0, 0, 1, 2};
    ASSERT_EQ(::write((*client)->fd(), partial, sizeof(partial)), 6);
  }
  EXPECT_EQ(vmm.requests(), 0);
  // The server serves the next one as if nothing happened.
  auto client = ControlClient::Connect(path);
  ASSERT_TRUE(client.ok());
  auto stats = (*client)->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->state(), control::RUNNING);
}

TEST(ControlServerTest, StopsWhileAClientHoldsTheConnection) {
  FakeVmm vmm;
  const std::string path = SocketPath("held");
  auto server = ControlServer::Create(path, vmm.handler());
  ASSERT_TRUE(server.ok());
  auto client = ControlClient::Connect(path);
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->Stats().ok());
  server->reset();  // returns: the idle connection does not hold it up
  EXPECT_FALSE((*client)->Stats().ok());
}

}  // namespace
}  // namespace sbx::vmm
