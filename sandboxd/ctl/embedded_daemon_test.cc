// The embedded sandboxd of `sandboxctl run`, with a fake daemon binary
// (fake_sandboxd_main.cc) in place of the real one.

#include "sandboxd/ctl/embedded_daemon.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "base/unique_fd.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "sbx/v1/sandbox.grpc.pb.h"

namespace sbx::ctl {
namespace {

using ::testing::HasSubstr;

class EmbeddedDaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/embedded_daemon_test-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
  }
  void TearDown() override {
    ASSERT_EQ(system(("rm -rf '" + dir_ + "'").c_str()), 0);
  }
  std::string dir_;
};

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

TEST_F(EmbeddedDaemonTest, ServesUntilDestroyedThenCleansUp) {
  auto d = EmbeddedDaemon::Start(SBX_FAKE_SANDBOXD, dir_);
  ASSERT_TRUE(d.ok()) << d.status();
  const std::string addr = (*d)->addr();
  ASSERT_TRUE(absl::StartsWith(addr, "unix://")) << addr;
  const std::string sock = addr.substr(7);
  const std::string tmp = sock.substr(0, sock.rfind('/'));
  // It answers calls, and got the state dir.
  {
    auto stub = sbx::v1::Sandboxes::NewStub(
        grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    sbx::v1::Sandbox sb;
    ASSERT_TRUE(stub->Create(&ctx, sbx::v1::CreateSandboxRequest(), &sb).ok());
    EXPECT_TRUE(absl::StartsWith(sb.id(), "sb-"));
  }
  EXPECT_TRUE(Exists(dir_ + "/fake-sandboxd-was-here"));
  EXPECT_FALSE(NothingListensAt(addr));

  d->reset();  // SIGTERM, wait, remove its directory
  EXPECT_FALSE(Exists(tmp)) << tmp;
  EXPECT_TRUE(NothingListensAt(addr));
}

TEST_F(EmbeddedDaemonTest, ADaemonThatExitsEarlyShowsWhy) {
  auto d = EmbeddedDaemon::Start("/bin/false", "");
  ASSERT_FALSE(d.ok());
  EXPECT_THAT(d.status().message(), HasSubstr("exited with status 1 before serving"));

  auto missing = EmbeddedDaemon::Start(dir_ + "/no-such-sandboxd", "");
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("cannot execute"));
  EXPECT_THAT(missing.status().message(), HasSubstr("on PATH"));
}

TEST_F(EmbeddedDaemonTest, NothingListensAt) {
  EXPECT_TRUE(NothingListensAt("unix://" + dir_ + "/none.sock"));
  EXPECT_FALSE(NothingListensAt("tcp://127.0.0.1:1"));  // only unix sockets are judged

  // A socket file whose listener is gone: refused.
  const std::string path = dir_ + "/stale.sock";
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, path.c_str(), path.size());
  {
    UniqueFd fd(socket(AF_UNIX, SOCK_STREAM, 0));
    ASSERT_EQ(bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
    ASSERT_EQ(listen(fd.get(), 1), 0);
    EXPECT_FALSE(NothingListensAt("unix://" + path));
  }
  EXPECT_TRUE(NothingListensAt("unix://" + path));
}

TEST_F(EmbeddedDaemonTest, FindsSandboxdBesideItself) {
  EXPECT_EQ(FindSandboxd(dir_ + "/sandboxctl"), "sandboxd");  // PATH lookup
  const std::string beside = dir_ + "/sandboxd";
  std::ofstream(beside) << "#!/bin/sh\n";
  ASSERT_EQ(chmod(beside.c_str(), 0755), 0);
  EXPECT_EQ(FindSandboxd(dir_ + "/sandboxctl"), beside);
}

// The sandboxctl binary itself: with nothing at the default address, `run`
// starts a daemon, runs the command, and stops it.
TEST_F(EmbeddedDaemonTest, SandboxctlRunStartsOneWhenNoneListens) {
  if (!NothingListensAt("unix:///run/sbx/sandboxd.sock")) {
    GTEST_SKIP() << "a sandboxd listens at /run/sbx/sandboxd.sock on this host";
  }
  const std::string err = dir_ + "/stderr";
  const std::string cmd = std::string("env -u SBX_ADDR SBX_SANDBOXD=") + SBX_FAKE_SANDBOXD +
                          " SBX_STATE_DIR=" + dir_ + " " + SBX_SANDBOXCTL +
                          " run -- echo hello world 2>" + err + " </dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[256];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int status = pclose(p);
  std::ifstream e(err);
  std::stringstream es;
  es << e.rdbuf();
  EXPECT_EQ(WEXITSTATUS(status), 0) << es.str();
  EXPECT_EQ(out, "hello world\n");
  EXPECT_EQ(es.str(), "starting sandboxd...\n");
  EXPECT_TRUE(Exists(dir_ + "/fake-sandboxd-was-here"));
}

}  // namespace
}  // namespace sbx::ctl
