// sbx-vmm under its default seccomp filters (label kvm): the test guests
// (serial, virtio-blk, virtio-vsock) run, the control channel pauses,
// snapshots, restores, records a working set and shuts down; and a
// forbidden system call in any thread role (the test hook) kills the VMM
// with SIGSYS.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "base/test_facility.h"
#include "base/unique_fd.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "vmm/control_client.h"
#include "vmm/testing/guests/guests.h"

extern char** environ;

namespace sbx::vmm {
namespace {

namespace control = ::sbx::control::v1;
using ::testing::HasSubstr;

std::string Temp(const std::string& name) {
  return ::testing::TempDir() + "seccomp_kvm_" + std::to_string(::getpid()) +
         "_" + name;
}

// sbx-vmm with `args`, stderr into `err_path`.
pid_t Spawn(std::vector<std::string> args, const std::string& err_path) {
  args.insert(args.begin(), SBX_VMM_BINARY);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, err_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = -1;
  if (::posix_spawn(&pid, SBX_VMM_BINARY, &actions, nullptr, argv.data(),
                    environ) != 0) {
    pid = -1;
  }
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

// How `pid` ended: "exit N" or "signal N"; killed (and "timeout") after
// `limit` (emulated KVM is slow).
std::string Wait(pid_t pid, std::chrono::seconds limit = std::chrono::seconds(600)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  int status = 0;
  for (;;) {
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0) return "waitpid failed";
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return "timeout";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "signal " + std::to_string(WTERMSIG(status));
  return "?";
}

const std::string kSigsys = "signal " + std::to_string(SIGSYS);

bool WaitForFile(const std::string& path, const std::string& text) {
  for (int i = 0; i < 300000; ++i) {
    if (testing::ReadFileToString(path).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

std::unique_ptr<ControlClient> ConnectControl(const std::string& path) {
  for (int i = 0; i < 2000; ++i) {
    auto c = ControlClient::Connect(path);
    if (c.ok()) return *std::move(c);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return nullptr;
}

class SeccompKvmTest : public ::testing::Test {
 protected:
  void SetUp() override { SBX_REQUIRE(testing::CheckKvm()); }
};

TEST_F(SeccompKvmTest, DefaultFiltersRunTheSerialAndBlkGuests) {
  const std::string console = Temp("hello.log");
  const std::string err = Temp("hello.err");
  pid_t pid = Spawn({"--kernel", guests::GuestPath("hello"), "--memory-mib", "32",
                     "--console", console},
                    err);
  ASSERT_GT(pid, 0);
  EXPECT_EQ(Wait(pid), "exit 0") << testing::ReadFileToString(err);
  EXPECT_THAT(testing::ReadFileToString(console), HasSubstr("sbx-guest: hello"));
  EXPECT_THAT(testing::ReadFileToString(err), ::testing::Not(HasSubstr("seccomp")));

  const std::string disk = Temp("blk.img");
  {
    UniqueFd fd(::open(disk.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    ASSERT_TRUE(fd.valid());
    ASSERT_EQ(::ftruncate(fd.get(), 1 << 20), 0);
  }
  const std::string blk_console = Temp("blk.log");
  pid = Spawn({"--kernel", guests::GuestPath("blk"), "--memory-mib", "32",
               "--console", blk_console, "--disk", disk},
              err);
  ASSERT_GT(pid, 0);
  EXPECT_EQ(Wait(pid), "exit 0") << testing::ReadFileToString(err);
  const std::string out = testing::ReadFileToString(blk_console);
  EXPECT_THAT(out, HasSubstr("blk: read matches write"));
  EXPECT_THAT(out, HasSubstr("blk: flush status=0"));
  EXPECT_THAT(out, HasSubstr("get-id status=0 id=sbx-disk-0"));
}

TEST_F(SeccompKvmTest, DefaultFiltersRunTheVsockGuestAgainstAHostEchoServer) {
  const std::string uds = Temp("v.sock");
  const std::string port_path = uds + "_1024";
  ::unlink(port_path.c_str());
  UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, port_path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(listener.get(), 4), 0);
  std::thread server([&] {
    pollfd p = {.fd = listener.get(), .events = POLLIN, .revents = 0};
    if (::poll(&p, 1, 300'000) != 1) return;
    UniqueFd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    char buf[256];
    for (;;) {
      pollfd q = {.fd = conn.get(), .events = POLLIN, .revents = 0};
      if (::poll(&q, 1, 300'000) != 1) return;
      ssize_t n = ::read(conn.get(), buf, sizeof(buf));
      if (n <= 0) return;
      if (::send(conn.get(), buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n) return;
    }
  });
  const std::string console = Temp("vsock.log");
  const std::string err = Temp("vsock.err");
  pid_t pid = Spawn({"--kernel", guests::GuestPath("vsock"), "--memory-mib", "32",
                     "--console", console, "--vsock", uds},
                    err);
  std::string how = pid > 0 ? Wait(pid) : "spawn failed";
  ::shutdown(listener.get(), SHUT_RDWR);
  server.join();
  ::unlink(port_path.c_str());
  EXPECT_EQ(how, "exit 0") << testing::ReadFileToString(err);
  const std::string out = testing::ReadFileToString(console);
  EXPECT_THAT(out, HasSubstr("vsock: echo matches"));
  EXPECT_THAT(out, HasSubstr("vsock: done"));
}

TEST_F(SeccompKvmTest, ForbiddenSyscallInAnyRoleKillsTheVmmWithSigsys) {
  for (const char* role : {"vcpu", "loop", "control", "main"}) {
    SCOPED_TRACE(role);
    const std::string err = Temp(std::string(role) + ".err");
    const std::string sock = Temp(std::string(role) + ".ctl");
    pid_t pid = Spawn({"--kernel", guests::GuestPath("hello"), "--memory-mib", "32",
                       "--console", Temp("hook.log"), "--control", sock,
                       "--seccomp-test-forbidden-syscall", role},
                      err);
    ASSERT_GT(pid, 0);
    EXPECT_EQ(Wait(pid), kSigsys) << testing::ReadFileToString(err);
    ::unlink(sock.c_str());
  }
  // In log mode the same call is allowed (and logged by the kernel); off
  // says loudly that it is unsafe.
  const std::string err = Temp("log.err");
  pid_t pid = Spawn({"--kernel", guests::GuestPath("hello"), "--memory-mib", "32",
                     "--console", Temp("hook.log"), "--seccomp=log",
                     "--seccomp-test-forbidden-syscall=vcpu"},
                    err);
  ASSERT_GT(pid, 0);
  EXPECT_EQ(Wait(pid), "exit 0") << testing::ReadFileToString(err);
  EXPECT_THAT(testing::ReadFileToString(err), HasSubstr("--seccomp=log"));
  pid = Spawn({"--kernel", guests::GuestPath("hello"), "--memory-mib", "32",
               "--console", Temp("hook.log"), "--seccomp", "off",
               "--seccomp-test-forbidden-syscall", "loop"},
              err);
  ASSERT_GT(pid, 0);
  EXPECT_EQ(Wait(pid), "exit 0") << testing::ReadFileToString(err);
  EXPECT_THAT(testing::ReadFileToString(err), HasSubstr("UNSAFE"));
}

TEST_F(SeccompKvmTest, SnapshotRestoreAndWorkingSetUnderTheFilters) {
  const std::string console = Temp("spin.log");
  const std::string err = Temp("spin.err");
  const std::string sock = Temp("spin.ctl");
  const std::string full = Temp("full");
  const std::string diff = Temp("diff");
  pid_t pid = Spawn({"--kernel", guests::GuestPath("spin"), "--memory-mib", "32",
                     "--console", console, "--control", sock},
                    err);
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(WaitForFile(console, "spinning"));
  std::unique_ptr<ControlClient> client = ConnectControl(sock);
  ASSERT_NE(client, nullptr);
  auto stats = client->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->state(), control::RUNNING);
  EXPECT_GT(stats->vmm_rss_bytes(), 0u);  // /proc/self/status, read filtered
  ASSERT_TRUE(client->Pause().ok());
  auto snap = client->Snapshot(full);
  ASSERT_TRUE(snap.ok()) << snap.status();
  ASSERT_TRUE(client->Resume().ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_TRUE(client->Pause().ok());
  auto d = client->SnapshotDiff(diff, full);
  ASSERT_TRUE(d.ok()) << d.status();
  stats = client->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_TRUE(stats->dirty_tracking());
  ASSERT_TRUE(client->Resume().ok());
  ASSERT_TRUE(client->Shutdown().ok());
  client.reset();
  EXPECT_EQ(Wait(pid), "exit 0") << testing::ReadFileToString(err);

  // A working set for the full snapshot (its recording VM is filtered too),
  // then restores: of the full one (with the prefetch thread), of the diff.
  pid = Spawn({"--restore", full, "--record-working-set", "300"}, err);
  ASSERT_GT(pid, 0);
  EXPECT_EQ(Wait(pid), "exit 0") << testing::ReadFileToString(err);
  struct stat st;
  EXPECT_EQ(::stat((full + "/workingset").c_str(), &st), 0);
  for (const std::string& dir : {full, diff}) {
    SCOPED_TRACE(dir);
    const std::string restored_sock = Temp("restored.ctl");
    pid = Spawn({"--restore", dir, "--console", Temp("restored.log"), "--control",
                 restored_sock},
                err);
    ASSERT_GT(pid, 0);
    client = ConnectControl(restored_sock);
    ASSERT_NE(client, nullptr);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    stats = client->Stats();
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_EQ(stats->state(), control::RUNNING);
    ASSERT_TRUE(client->Shutdown().ok());
    client.reset();
    EXPECT_EQ(Wait(pid), "exit 0") << testing::ReadFileToString(err);
  }
}

}  // namespace
}  // namespace sbx::vmm
