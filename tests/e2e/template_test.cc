// End to end: `sbx-vmm --snapshot-when-ready DIR` makes a template from the
// Linux image: it boots, waits for the agent, snapshots, records the
// working set and exits 0; VMs restored from DIR answer and run a command,
// with fewer host page faults when the working set is prefetched. A
// deadline the agent cannot meet ends it with exit status 6 and says why. Needs /dev/kvm and the built images (label e2e).
#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/test_facility.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "guest/client.h"
#include "vmm/machine.h"
#include "vmm/snapshot/working_set.h"

extern char** environ;

namespace sbx {
namespace {

using ::testing::HasSubstr;

// The sbx-vmm binary of this build: vmm/sbx-vmm beside tests/.
std::string VmmBinary() {
  return (std::filesystem::read_symlink("/proc/self/exe").parent_path().parent_path() /
          "vmm" / "sbx-vmm")
      .string();
}

uint64_t HostFaults() {
  struct rusage ru;
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<uint64_t>(ru.ru_minflt + ru.ru_majflt);
}

// Runs `argv`, stderr to `err_path`; returns the exit status (-1: not run
// or killed).
int RunProcess(const std::vector<std::string>& argv, const std::string& err_path) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid;
  int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return -1;
  int status = 0;
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

class TemplateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SBX_REQUIRE(testing::CheckKvm());
    SBX_REQUIRE(testing::CheckImage("kernel/current/vmlinux"));
    SBX_REQUIRE(testing::CheckImage("rootfs/current/rootfs.ext4"));
    ASSERT_TRUE(std::filesystem::exists(VmmBinary())) << VmmBinary();
    std::string pattern = ::testing::TempDir() + "template_XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    disk_ = dir_ + "/upper.img";
    int fd = open(disk_.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, 128 << 20), 0);
    close(fd);
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  std::string rootfs() const {
    return testing::ImageCacheDir() + "/rootfs/current/rootfs.ext4";
  }
  std::vector<std::string> Command(const std::string& tpl) const {
    return {VmmBinary(), "--kernel",
            testing::ImageCacheDir() + "/kernel/current/vmlinux", "--rootfs",
            rootfs(), "--disk", disk_, "--memory-mib", "384", "--cmdline",
            "sbx.upper=/dev/vdb", "--console", dir_ + "/console.log", "--vsock",
            dir_ + "/t.sock", "--snapshot-when-ready", tpl};
  }

  std::string dir_;
  std::string disk_;
};

TEST_F(TemplateTest, SnapshotWhenReadyMakesATemplateThatRestores) {
  const std::string tpl = dir_ + "/template";
  std::vector<std::string> cmd = Command(tpl);
  for (const char* a : {"--ready-timeout", "900", "--record-working-set", "3000"}) {
    cmd.push_back(a);
  }
  const std::string err = dir_ + "/make.err";
  ASSERT_EQ(RunProcess(cmd, err), 0)
      << testing::ReadFileToString(err) << "\nconsole:\n"
      << testing::ReadFileToString(dir_ + "/console.log");
  EXPECT_THAT(testing::ReadFileToString(err), HasSubstr("template in " + tpl));
  for (const char* f : {"/vmstate", "/memory", "/workingset"}) {
    EXPECT_TRUE(std::filesystem::exists(tpl + f)) << f;
  }
  absl::StatusOr<vmm::snapshot::WorkingSet> ws =
      vmm::snapshot::ReadWorkingSet(tpl + "/workingset", uint64_t{384} << 20);
  ASSERT_TRUE(ws.ok()) << ws.status();
  EXPECT_GT(ws->pages(), 0u);

  // Clones, each with its own copy of the writable disk, without and with
  // the working set prefetched: all answer and run a command; the host
  // faults and the time from the start of the restore to the agent's first
  // answer are printed (twice each, alternating; the minimum counts).
  struct Sample {
    uint64_t faults = ~0ull;  // Run() start -> first answer
    double ms = 1e18;         // Restore() start -> first answer
    uint64_t prefetched = 0;
  };
  int clone = 0;
  auto restore_and_ping = [&](vmm::RestoreOptions::Prefetch prefetch) -> Sample {
    Sample s;
    const std::string n = std::to_string(clone++);
    const std::string clone_disk = dir_ + "/clone" + n + ".img";
    std::filesystem::copy_file(disk_, clone_disk);
    vmm::RestoreOptions options;
    options.disk_paths = {rootfs(), clone_disk};
    options.vsock_path = dir_ + "/c" + n + ".sock";
    options.console = dir_ + "/clone" + n + ".log";
    options.prefetch = prefetch;
    const auto t0 = std::chrono::steady_clock::now();
    absl::StatusOr<std::unique_ptr<vmm::Machine>> m =
        vmm::Machine::Restore(tpl, options);
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) return s;
    s.prefetched = (*m)->prefetched_pages();
    const uint64_t f0 = HostFaults();
    std::thread runner([&] { (void)(*m)->Run(); });
    agent::Client client(agent::NewVsockDialer(*options.vsock_path, 1024));
    absl::Status last;
    bool answered = false;
    while (std::chrono::steady_clock::now() - t0 < std::chrono::minutes(5)) {
      absl::StatusOr<agent::Pong> pong = client.Ping();
      if (pong.ok()) {
        answered = true;
        break;
      }
      last = pong.status();
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    s.faults = HostFaults() - f0;
    s.ms = std::chrono::duration<double, std::milli>(
               std::chrono::steady_clock::now() - t0).count();
    EXPECT_TRUE(answered) << last;
    if (answered) {
      absl::StatusOr<agent::ExecResult> r =
          client.Run({"/bin/echo", "from the template"});
      EXPECT_TRUE(r.ok()) << r.status();
      if (r.ok()) {
        EXPECT_EQ(r->stdout_data, "from the template\n");
      }
    }
    (*m)->Stop();
    runner.join();
    return s;
  };
  using Prefetch = vmm::RestoreOptions::Prefetch;
  Sample off, on, bg;
  for (int round = 0; round < 2; ++round) {
    for (auto [mode, best] : {std::pair{Prefetch::kOff, &off},
                              std::pair{Prefetch::kBeforeRun, &on},
                              std::pair{Prefetch::kBackground, &bg}}) {
      Sample s = restore_and_ping(mode);
      if (s.faults < best->faults) best->faults = s.faults;
      if (s.ms < best->ms) best->ms = s.ms;
      best->prefetched = s.prefetched;
    }
  }
  std::printf("working set: %" PRIu64 " pages in %zu ranges\n", ws->pages(),
              ws->read.size() + ws->written.size());
  std::printf("no prefetch:         %" PRIu64 " host faults restore->first agent answer, "
              "%.1f ms\n", off.faults, off.ms);
  std::printf("prefetch before run: %" PRIu64 " host faults after resume, %.1f ms "
              "(%" PRIu64 " pages prefetched)\n", on.faults, on.ms, on.prefetched);
  std::printf("prefetch background: %" PRIu64 " host faults after resume, %.1f ms\n",
              bg.faults, bg.ms);
  EXPECT_EQ(off.prefetched, 0u);
  EXPECT_EQ(on.prefetched, ws->pages());
  EXPECT_LT(on.faults, off.faults);
}

TEST_F(TemplateTest, AnAgentThatNeverAnswersInTimeEndsWithStatus6) {
  std::vector<std::string> cmd = Command(dir_ + "/never");
  cmd.push_back("--ready-timeout");
  cmd.push_back("1");  // Linux does not boot that fast here
  const std::string err = dir_ + "/timeout.err";
  EXPECT_EQ(RunProcess(cmd, err), 6) << testing::ReadFileToString(err);
  EXPECT_THAT(testing::ReadFileToString(err),
              HasSubstr("the agent did not answer on vsock port 1024"));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/never/vmstate"));
}

}  // namespace
}  // namespace sbx
