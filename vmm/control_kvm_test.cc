// The control channel driving a real KVM VM (label kvm): a client pauses,
// snapshots (full and diff), resumes, reads stats and shuts the VM down
// over the socket, in-process and through the sbx-vmm binary.
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "base/test_facility.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "vmm/control_client.h"
#include "vmm/control_server.h"
#include "vmm/machine.h"
#include "vmm/testing/guests/guests.h"

extern char** environ;

namespace sbx::vmm {
namespace {

namespace control = ::sbx::control::v1;
using ::testing::HasSubstr;

std::string Temp(const std::string& name) {
  return ::testing::TempDir() + "control_kvm_" + std::to_string(::getpid()) +
         "_" + name;
}

bool WaitForConsole(const std::string& path, const std::string& text) {
  for (int i = 0; i < 300000; ++i) {
    if (testing::ReadFileToString(path).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

class ControlKvmTest : public ::testing::Test {
 protected:
  void SetUp() override { SBX_REQUIRE(testing::CheckKvm()); }
};

TEST_F(ControlKvmTest, ClientPausesSnapshotsResumesAndShutsDownAVm) {
  MachineConfig config;
  config.kernel = guests::GuestPath("spin");
  config.memory_mib = 32;
  config.console = Temp("spin.log");
  auto m = Machine::Create(config);
  ASSERT_TRUE(m.ok()) << m.status();
  const std::string path = Temp("ctl.sock");
  auto server = ControlServer::Create(path, MachineControlHandler(**m));
  ASSERT_TRUE(server.ok()) << server.status();
  MachineExit exit;
  std::thread runner([&] { exit = (*m)->Run(); });
  ASSERT_TRUE(WaitForConsole(config.console, "spinning"));

  auto client = ControlClient::Connect(path);
  ASSERT_TRUE(client.ok()) << client.status();
  auto stats = (*client)->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->state(), control::RUNNING);
  EXPECT_EQ(stats->guest_memory_bytes(), uint64_t{32} << 20);
  EXPECT_GT(stats->vmm_rss_bytes(), 0u);
  EXPECT_GT(stats->exits_io(), 0u);  // the serial line it printed
  EXPECT_FALSE(stats->dirty_tracking());

  // A snapshot needs a paused VM; a diff needs a base.
  EXPECT_TRUE(absl::IsFailedPrecondition((*client)->Snapshot(Temp("full")).status()));
  ASSERT_TRUE((*client)->Pause().ok());
  EXPECT_TRUE(absl::IsFailedPrecondition((*client)->Pause()));
  stats = (*client)->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->state(), control::PAUSED);
  EXPECT_TRUE(absl::IsFailedPrecondition(
      (*client)->SnapshotDiff(Temp("diff"), Temp("full")).status()));

  auto full = (*client)->Snapshot(Temp("full"));
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(full->memory_pages(), (uint64_t{32} << 20) / 4096);
  EXPECT_GT(full->memory_data_bytes(), 0u);
  stats = (*client)->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_TRUE(stats->dirty_tracking());
  EXPECT_EQ(stats->dirty_pages(), 0u);  // paused since the base

  // A diff against anything but the tracked base is refused.
  auto other = (*client)->SnapshotDiff(Temp("diff"), "/");
  EXPECT_TRUE(absl::IsFailedPrecondition(other.status())) << other.status();
  EXPECT_THAT(other.status().message(), HasSubstr("not the tracked base"));
  // A bad kind is refused.
  control::Request bad;
  bad.mutable_snapshot()->set_dir(Temp("diff"));
  auto response = (*client)->Call(bad);
  ASSERT_TRUE(response.ok());
  EXPECT_EQ(response->code(), static_cast<int>(absl::StatusCode::kInvalidArgument));

  ASSERT_TRUE((*client)->Resume().ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_TRUE((*client)->Pause().ok());
  auto diff = (*client)->SnapshotDiff(Temp("diff"), Temp("full"));
  ASSERT_TRUE(diff.ok()) << diff.status();
  // The spinning guest writes (almost) nothing: a tiny diff.
  EXPECT_LT(diff->memory_pages(), 64u);
  EXPECT_LT(diff->memory_data_bytes(), full->memory_data_bytes());

  // Shutdown works while paused; Run returns, the exit status is 0.
  ASSERT_TRUE((*client)->Shutdown().ok());
  runner.join();
  EXPECT_EQ(exit.kind, ExitKind::kGuestReset);
  EXPECT_THAT(exit.description, HasSubstr("control channel"));
  EXPECT_EQ(ExitStatus(exit.kind), 0);
  stats = (*client)->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->state(), control::STOPPED);

  // The diff restores (over its base) into a VM that runs.
  server->reset();
  RestoreOptions options;
  options.console = Temp("restored.log");
  auto restored = Machine::Restore(Temp("diff"), options);
  ASSERT_TRUE(restored.ok()) << restored.status();
  MachineStats rs = (*restored)->Stats();
  EXPECT_TRUE(rs.dirty_tracking);
  EXPECT_EQ(rs.dirty_base_dir.substr(rs.dirty_base_dir.rfind('/')),
            Temp("full").substr(Temp("full").rfind('/')));
}

TEST_F(ControlKvmTest, SbxVmmBinaryServesControlAndExitsZeroOnShutdown) {
  const std::string path = Temp("bin.sock");
  const std::string console = Temp("bin.log");
  std::vector<std::string> args = {SBX_VMM_BINARY, "--kernel",
                                   guests::GuestPath("spin"), "--memory-mib",
                                   "32", "--console", console, "--control", path};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid;
  ASSERT_EQ(::posix_spawn(&pid, SBX_VMM_BINARY, nullptr, nullptr, argv.data(),
                          environ), 0);
  ASSERT_TRUE(WaitForConsole(console, "spinning"));
  std::unique_ptr<ControlClient> client;
  for (int i = 0; i < 1000 && client == nullptr; ++i) {
    auto c = ControlClient::Connect(path);
    if (c.ok()) client = *std::move(c);
    else std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_NE(client, nullptr);
  struct stat st;
  ASSERT_EQ(::lstat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto stats = client->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->state(), control::RUNNING);
  EXPECT_GT(stats->vmm_rss_bytes(), 1u << 20);
  ASSERT_TRUE(client->Shutdown().ok());
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_NE(::lstat(path.c_str(), &st), 0);  // the socket is gone
}

}  // namespace
}  // namespace sbx::vmm
