// Snapshot and restore of a running test guest in a real KVM VM (label
// kvm): a computation paused and snapshotted in the middle finishes, after
// a restore, exactly as an uninterrupted run does; one snapshot restores
// several times.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "base/test_facility.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "vmm/machine.h"
#include "vmm/testing/guests/guests.h"

namespace sbx::vmm {
namespace {

using ::testing::HasSubstr;

// guest_compute.c: its result table.
constexpr GuestAddress kResults = 0x400000;
constexpr size_t kResultBytes = 4096 * 8;

std::string Temp(const std::string& name) {
  return ::testing::TempDir() + "snapshot_kvm_" + std::to_string(::getpid()) +
         "_" + name;
}

MachineConfig ComputeConfig(const std::string& console) {
  MachineConfig c;
  c.kernel = guests::GuestPath("compute");
  c.memory_mib = 64;
  c.console = console;
  return c;
}

std::vector<uint8_t> Results(const Machine& m) {
  std::vector<uint8_t> bytes(kResultBytes);
  EXPECT_TRUE(m.memory().Read(kResults, bytes).ok());
  return bytes;
}

// Waits (bounded) until the console at `path` shows `text`.
bool WaitForConsole(const std::string& path, const std::string& text) {
  for (int i = 0; i < 300000; ++i) {
    if (testing::ReadFileToString(path).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

class SnapshotKvmTest : public ::testing::Test {
 protected:
  // The uninterrupted run (once for all tests): its console and table.
  void SetUp() override {
    SBX_REQUIRE(testing::CheckKvm());
    if (!reference_console_.empty()) return;
    const std::string console = Temp("reference.log");
    auto m = Machine::Create(ComputeConfig(console));
    ASSERT_TRUE(m.ok()) << m.status();
    MachineExit exit = (*m)->Run();
    ASSERT_EQ(exit.kind, ExitKind::kGuestReset) << exit.description;
    reference_console_ = testing::ReadFileToString(console);
    reference_results_ = Results(**m);
    ASSERT_THAT(reference_console_, HasSubstr("compute: step 15"));
    ASSERT_THAT(reference_console_, HasSubstr("compute: done sum="));
  }

  // Runs the guest, pauses it once it printed step 2, snapshots it into
  // `dir`, resumes it and lets it finish. Returns the console up to the
  // pause.
  std::string RunAndSnapshot(const std::string& dir) {
    const std::string console = Temp("snapshotted.log");
    auto m = Machine::Create(ComputeConfig(console));
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) return "";
    MachineExit exit;
    std::thread runner([&] { exit = (*m)->Run(); });
    std::string before;
    if (WaitForConsole(console, "compute: step 2 ")) {
      absl::Status s = (*m)->Pause();
      EXPECT_TRUE(s.ok()) << s;
      before = testing::ReadFileToString(console);
      // A paused guest writes nothing.
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      EXPECT_EQ(testing::ReadFileToString(console), before);
      s = (*m)->Snapshot(dir);
      EXPECT_TRUE(s.ok()) << s;
      EXPECT_FALSE((*m)->Pause().ok());  // already paused
      s = (*m)->Resume();
      EXPECT_TRUE(s.ok()) << s;
    } else {
      ADD_FAILURE() << "the guest never reached step 2";
      (*m)->Stop();
    }
    runner.join();
    // Paused and resumed, the original finishes as if nothing happened.
    EXPECT_EQ(exit.kind, ExitKind::kGuestReset) << exit.description;
    EXPECT_EQ(testing::ReadFileToString(console), reference_console_);
    EXPECT_EQ(Results(**m), reference_results_);
    return before;
  }

  static std::string reference_console_;
  static std::vector<uint8_t> reference_results_;
};

std::string SnapshotKvmTest::reference_console_;
std::vector<uint8_t> SnapshotKvmTest::reference_results_;

TEST_F(SnapshotKvmTest, RestoredComputationFinishesLikeAnUninterruptedRun) {
  const std::string dir = Temp("snap");
  const std::string before = RunAndSnapshot(dir);
  ASSERT_THAT(before, HasSubstr("compute: step 2 "));
  ASSERT_THAT(before, ::testing::Not(HasSubstr("compute: done")));

  // The memory file is sparse: 64 MiB of RAM, little of it written.
  struct stat st;
  ASSERT_EQ(::stat((dir + "/memory").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 64 << 20);
  EXPECT_LT(st.st_blocks * 512, 8 << 20);

  RestoreOptions options;
  options.console = Temp("restored.log");
  ::unlink(options.console->c_str());
  auto m = Machine::Restore(dir, options);
  ASSERT_TRUE(m.ok()) << m.status();
  MachineExit exit = (*m)->Run();
  EXPECT_EQ(exit.kind, ExitKind::kGuestReset) << exit.description;
  EXPECT_EQ(before + testing::ReadFileToString(*options.console),
            reference_console_);
  EXPECT_EQ(Results(**m), reference_results_);
}

TEST_F(SnapshotKvmTest, OneSnapshotRestoresThreeTimesAtOnce) {
  const std::string dir = Temp("snap3");
  const std::string before = RunAndSnapshot(dir);
  ASSERT_THAT(before, HasSubstr("compute: step 2 "));

  constexpr int kClones = 3;
  std::vector<std::unique_ptr<Machine>> clones;
  std::vector<std::string> consoles;
  for (int i = 0; i < kClones; ++i) {
    RestoreOptions options;
    consoles.push_back(Temp("clone" + std::to_string(i) + ".log"));
    ::unlink(consoles.back().c_str());
    options.console = consoles.back();
    auto m = Machine::Restore(dir, options);
    ASSERT_TRUE(m.ok()) << m.status();
    clones.push_back(*std::move(m));
  }
  std::vector<MachineExit> exits(kClones);
  std::vector<std::thread> runners;
  for (int i = 0; i < kClones; ++i) {
    runners.emplace_back([&, i] { exits[i] = clones[i]->Run(); });
  }
  for (std::thread& t : runners) t.join();
  for (int i = 0; i < kClones; ++i) {
    EXPECT_EQ(exits[i].kind, ExitKind::kGuestReset) << i << ": " << exits[i].description;
    EXPECT_EQ(before + testing::ReadFileToString(consoles[i]), reference_console_) << i;
    EXPECT_EQ(Results(*clones[i]), reference_results_) << i;
  }
}

TEST_F(SnapshotKvmTest, ACorruptSnapshotIsRefusedWithAClearError) {
  const std::string dir = Temp("snap_corrupt");
  ASSERT_THAT(RunAndSnapshot(dir), HasSubstr("compute: step 2 "));
  // Truncate the memory file: it no longer matches the snapshot's RAM.
  ASSERT_EQ(::truncate((dir + "/memory").c_str(), 4096), 0);
  RestoreOptions options;
  options.console = Temp("corrupt.log");
  auto m = Machine::Restore(dir, options);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("memory"));
}

}  // namespace
}  // namespace sbx::vmm
