// Hostile guests against real sbx-vmm processes (label kvm; issue 7). A
// guest that storms its VMM without pause (guest_storm: queue notification
// storms, descriptor loops, device resets mid-flight, MMIO and port I/O
// nobody owns, a console flood) must not stop its neighbours from running
// to completion, must not stop its own VMM from answering the control
// channel (stats, pause, resume), and must not grow its console file past
// its bound. Liveness only, with generous deadlines: how fast is for
// bench/, not for tests.
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/test_facility.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "vmm/control_client.h"
#include "vmm/testing/guests/guests.h"

extern char** environ;

namespace sbx::vmm {
namespace {

namespace control = ::sbx::control::v1;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

constexpr uint64_t kConsoleLimit = 16 * 1024;

pid_t Spawn(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  if (::posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0) return -1;
  return pid;
}

// Waits up to `seconds` for `pid` to exit; its wait status, or -1.
int WaitFor(pid_t pid, int seconds) {
  const Clock::time_point start = Clock::now();
  while (Clock::now() - start < std::chrono::seconds(seconds)) {
    int status = 0;
    pid_t got = ::waitpid(pid, &status, WNOHANG);
    if (got == pid) return status;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return -1;
}

// A line for the test's log: how long each phase took beside the storm.
void Phase(Clock::time_point start, const char* what) {
  std::printf("[%6.1f s] %s\n",
              std::chrono::duration<double>(Clock::now() - start).count(), what);
  std::fflush(stdout);
}

bool WaitForText(const std::string& path, const std::string& text, int seconds) {
  const Clock::time_point start = Clock::now();
  while (Clock::now() - start < std::chrono::seconds(seconds)) {
    if (testing::ReadFileToString(path).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

uint64_t FileSize(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

class HostileGuestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SBX_REQUIRE(testing::CheckKvm());
    std::string pattern = ::testing::TempDir() + "hostile_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    if (storm_ > 0) {
      ::kill(storm_, SIGKILL);
      ::waitpid(storm_, nullptr, 0);
    }
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  std::string dir_;
  pid_t storm_ = -1;
};

TEST_F(HostileGuestTest, AStormingGuestStopsNeitherItsNeighboursNorItsControlChannel) {
  const std::string disk = dir_ + "/disk.img";
  { std::ofstream(disk).write(std::string(1 << 20, 'd').data(), 1 << 20); }
  const std::string console = dir_ + "/storm.log";
  const std::string control_path = dir_ + "/control.sock";
  storm_ = Spawn({SBX_VMM_BINARY, "--kernel", guests::GuestPath("storm"), "--memory-mib", "32",
                  "--disk", disk, "--console", console, "--console-max-bytes",
                  absl::StrCat(kConsoleLimit), "--control", control_path});
  ASSERT_GT(storm_, 0);
  const Clock::time_point start = Clock::now();
  // Its device still serves it between attacks.
  ASSERT_TRUE(WaitForText(console, "storm: round 3 ok", 180))
      << testing::ReadFileToString(console).substr(0, 2000);
  EXPECT_THAT(testing::ReadFileToString(console), ::testing::Not(HasSubstr("device failed")));
  Phase(start, "storm: round 3");

  // Neighbours: three VMs run to completion, one after another, while the
  // storm goes on.
  for (int i = 0; i < 3; ++i) {
    const std::string log = absl::StrCat(dir_, "/hello", i, ".log");
    pid_t hello = Spawn({SBX_VMM_BINARY, "--kernel", guests::GuestPath("hello"),
                         "--memory-mib", "16", "--console", log});
    ASSERT_GT(hello, 0);
    const int status = WaitFor(hello, 180);
    if (status == -1) ::kill(hello, SIGKILL), ::waitpid(hello, nullptr, 0);
    ASSERT_NE(status, -1) << "neighbour " << i << " did not finish beside the storm";
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
    EXPECT_THAT(testing::ReadFileToString(log), HasSubstr("sbx-guest: bye"));
    Phase(start, "a neighbour ran to completion");
  }
  int status = 0;
  ASSERT_EQ(::waitpid(storm_, &status, WNOHANG), 0) << "the storming VMM itself died";

  // Its control channel answers; pause stops the storm, resume restarts it.
  absl::StatusOr<std::unique_ptr<ControlClient>> client = ControlClient::Connect(control_path);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<control::Stats> before = (*client)->Stats();
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_EQ(before->state(), control::RUNNING);
  EXPECT_GT(before->exits_mmio(), 0u);
  ASSERT_TRUE((*client)->Pause().ok());
  absl::StatusOr<control::Stats> paused = (*client)->Stats();
  ASSERT_TRUE(paused.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  absl::StatusOr<control::Stats> still = (*client)->Stats();
  ASSERT_TRUE(still.ok());
  EXPECT_EQ(still->state(), control::PAUSED);
  EXPECT_EQ(still->exits_mmio(), paused->exits_mmio()) << "a paused guest made exits";
  ASSERT_TRUE((*client)->Resume().ok());
  bool storming = false;
  for (int i = 0; i < 600 && !storming; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    absl::StatusOr<control::Stats> now = (*client)->Stats();
    ASSERT_TRUE(now.ok()) << now.status();
    storming = now->exits_mmio() > still->exits_mmio() + 1000;
  }
  EXPECT_TRUE(storming) << "the resumed guest made no progress";
  Phase(start, "stats, pause, resume answered");

  // Its console stopped growing at the bound (the flood goes on: the
  // guest has printed far more by now), with a note saying so.
  ASSERT_TRUE(WaitForText(console, "console output beyond", 300))
      << "the console never reached its bound; it holds " << FileSize(console) << " bytes";
  Phase(start, "the console reached its bound");
  const uint64_t size = FileSize(console);
  EXPECT_LE(size, kConsoleLimit + 128);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  EXPECT_EQ(FileSize(console), size);

  ::kill(storm_, SIGKILL);
  ASSERT_EQ(::waitpid(storm_, &status, 0), storm_);
  storm_ = -1;
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

}  // namespace
}  // namespace sbx::vmm
