// End to end: the guest kernel boots the Debian rootfs (images/rootfs)
// under sbx-vmm with a writable disk and virtio-vsock; sbx-agent (PID 1)
// formats the disk, builds the overlay root and answers the host over
// vsock: commands run, files move, and what was written survives into the
// next VM booted from the same disk. Needs /dev/kvm and the built images
// (label e2e).
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/test_facility.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "guest/client.h"
#include "vmm/machine.h"

namespace sbx {
namespace {

using ::testing::HasSubstr;

// Generous: under an emulated KVM host a boot takes seconds to minutes.
constexpr auto kAgentDeadline = std::chrono::seconds(300);
// The most one VM of this test may run, whatever it does.
constexpr absl::Duration kVmDeadline = absl::Seconds(300);

// Progress on stdout as the test goes: where a hung emulated host stopped.
void Step(const char* what) {
  std::printf("[ step ] %s\n", what);
  std::fflush(stdout);
}

// One booted VM on its own thread.
class RunningVm {
 public:
  RunningVm(vmm::MachineConfig config, std::string vsock_path)
      : config_(std::move(config)), vsock_path_(std::move(vsock_path)) {}

  ~RunningVm() {
    if (machine_) machine_->Stop();
    if (thread_.joinable()) thread_.join();
    {
      absl::MutexLock lock(&mu_);
      ended_ = true;
    }
    if (watchdog_.joinable()) watchdog_.join();
  }

  absl::Status Start() {
    absl::StatusOr<std::unique_ptr<vmm::Machine>> machine =
        vmm::Machine::Create(config_);
    if (!machine.ok()) return machine.status();
    machine_ = std::move(*machine);
    thread_ = std::thread([this] {
      exit_ = machine_->Run();
      absl::MutexLock lock(&mu_);
      ended_ = true;
    });
    // A VM that hangs must fail the test with its console, not hang the
    // suite: past the deadline the machine is stopped, which closes its
    // vsock sockets and so unblocks any client call.
    watchdog_ = std::thread([this] {
      absl::MutexLock lock(&mu_);
      if (!mu_.AwaitWithTimeout(absl::Condition(&ended_), kVmDeadline)) {
        std::printf("[ watchdog ] VM still running after %s: stopping it\n",
                    absl::FormatDuration(kVmDeadline).c_str());
        std::fflush(stdout);
        std::string console = testing::ReadFileToString(config_.console);
        std::printf("[ watchdog ] console tail:\n%s\n",
                    console.substr(console.size() > 4000 ? console.size() - 4000
                                                         : 0)
                        .c_str());
        std::fflush(stdout);
        machine_->Stop();
      }
    });
    return absl::OkStatus();
  }

  // Pings the agent until it answers; how long that took.
  absl::StatusOr<double> WaitForAgent(agent::Client& client) {
    auto start = std::chrono::steady_clock::now();
    absl::Status last;
    while (std::chrono::steady_clock::now() - start < kAgentDeadline) {
      absl::StatusOr<agent::Pong> pong = client.Ping();
      if (pong.ok()) {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                             start)
            .count();
      }
      last = pong.status();
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return absl::DeadlineExceededError(
        absl::StrCat("agent did not answer: ", last.ToString(), "\nconsole:\n",
                     testing::ReadFileToString(config_.console)));
  }

  // Waits for the VM to end by itself.
  vmm::MachineExit Join() {
    thread_.join();
    return exit_;
  }

  std::string console() const {
    return testing::ReadFileToString(config_.console);
  }

  const std::string& console_path() const { return config_.console; }

 private:
  vmm::MachineConfig config_;
  std::string vsock_path_;
  std::unique_ptr<vmm::Machine> machine_;
  std::thread thread_;
  vmm::MachineExit exit_;
  absl::Mutex mu_;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  std::thread watchdog_;
};

class AgentVmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SBX_REQUIRE(testing::CheckKvm());
    SBX_REQUIRE(testing::CheckImage("kernel/current/vmlinux"));
    SBX_REQUIRE(testing::CheckImage("rootfs/current/rootfs.ext4"));
    std::string pattern = ::testing::TempDir() + "agent_vm_XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    // The sandbox's writable disk: sparse and unformatted, as sandboxd
    // hands it out; the agent formats it on first boot.
    disk_ = dir_ + "/upper.img";
    int fd = open(disk_.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, 256 << 20), 0);
    close(fd);
  }

  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  std::unique_ptr<RunningVm> Boot(const std::string& name) {
    vmm::MachineConfig config;
    config.kernel = testing::ImageCacheDir() + "/kernel/current/vmlinux";
    config.disks.push_back(
        {testing::ImageCacheDir() + "/rootfs/current/rootfs.ext4", true});
    config.disks.push_back({disk_, false});
    config.has_rootfs = true;
    config.cpus = 1;
    config.memory_mib = 512;
    config.extra_cmdline = "sbx.upper=/dev/vdb";
    config.console = dir_ + "/console_" + name + ".log";
    std::string vsock = dir_ + "/v.sock";
    config.vsock = vmm::VsockConfig{.uds_path = vsock, .guest_cid = 3};
    return std::make_unique<RunningVm>(config, vsock);
  }

  std::unique_ptr<agent::Client> Connect() {
    return std::make_unique<agent::Client>(
        agent::NewVsockDialer(dir_ + "/v.sock", 1024));
  }

  std::string dir_;
  std::string disk_;
};

TEST_F(AgentVmTest, RunsCommandsMovesFilesAndKeepsThemAcrossBoots) {
  std::string data;
  for (int i = 0; i < (1 << 20); ++i) data += static_cast<char>(i * 31 + i / 7);
  {
    std::unique_ptr<RunningVm> vm = Boot("first");
    ASSERT_TRUE(vm->Start().ok());
    std::unique_ptr<agent::Client> client = Connect();
    absl::StatusOr<double> ready = vm->WaitForAgent(*client);
    ASSERT_TRUE(ready.ok()) << ready.status() << "\n" << vm->console();
    std::printf("[ agent ] first boot: agent answered after %.1f s wall "
                "(emulated host: no product number)\n", *ready);
    std::fflush(stdout);
    absl::StatusOr<agent::Pong> pong = client->Ping();
    ASSERT_TRUE(pong.ok());
    EXPECT_TRUE(pong->pid1());

    auto t0 = std::chrono::steady_clock::now();
    absl::StatusOr<agent::ExecResult> python =
        client->Run({"python3", "-c", "print(6*7)"});
    ASSERT_TRUE(python.ok()) << python.status() << "\n" << vm->console();
    EXPECT_EQ(python->stdout_data, "42\n") << python->stderr_data;
    EXPECT_EQ(python->exited.exit_code(), 0);
    std::printf("[ agent ] python3 -c 'print(6*7)': %.2f s wall\n",
                std::chrono::duration<double>(
                    std::chrono::steady_clock::now() - t0)
                    .count());
    std::fflush(stdout);

    Step("shell exit 3");
    agent::Exec shell;
    shell.set_shell("exit 3");
    shell.set_close_stdin(true);
    absl::StatusOr<agent::ExecResult> three = client->Run(shell);
    ASSERT_TRUE(three.ok()) << three.status();
    EXPECT_EQ(three->exited.exit_code(), 3);

    Step("mounts");
    // The overlay root: / is writable, on the sandbox's disk.
    shell.set_shell("grep -E ' / |/dev/vdb' /proc/mounts; hostname");
    absl::StatusOr<agent::ExecResult> mounts = client->Run(shell);
    ASSERT_TRUE(mounts.ok()) << mounts.status();
    EXPECT_THAT(mounts->stdout_data, HasSubstr("overlay / overlay"));
    EXPECT_THAT(mounts->stdout_data, HasSubstr("sandbox"));

    Step("write 1 MiB");
    ASSERT_TRUE(client->WriteFileFromString("/root/data.bin", data, 0600).ok());
    Step("read 1 MiB");
    absl::StatusOr<std::string> back = client->ReadFileToString("/root/data.bin");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_TRUE(*back == data) << "file came back different";

    Step("timeout");
    agent::Exec timeout;
    timeout.set_shell("sleep 1000");
    timeout.set_timeout_ms(1000);
    absl::StatusOr<agent::ExecResult> timed = client->Run(timeout);
    ASSERT_TRUE(timed.ok()) << timed.status();
    EXPECT_TRUE(timed->exited.timed_out());

    Step("shutdown");
    // Shutdown syncs the disk and ends the VM.
    ASSERT_TRUE(client->Shutdown().ok());
    vmm::MachineExit exit = vm->Join();
    EXPECT_EQ(exit.kind, vmm::ExitKind::kGuestReset)
        << exit.description << "\n"
        << testing::ReadFileToString(vm->console_path());
  }
  {
    // A new VM from the same writable disk sees the file.
    std::unique_ptr<RunningVm> vm = Boot("second");
    ASSERT_TRUE(vm->Start().ok());
    std::unique_ptr<agent::Client> client = Connect();
    absl::StatusOr<double> ready = vm->WaitForAgent(*client);
    ASSERT_TRUE(ready.ok()) << ready.status() << "\n" << vm->console();
    std::printf("[ agent ] second boot: agent answered after %.1f s wall\n",
                *ready);
    std::fflush(stdout);
    absl::StatusOr<std::string> back = client->ReadFileToString("/root/data.bin");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_TRUE(*back == data) << "the file did not survive the reboot";
    ASSERT_TRUE(client->Shutdown().ok());
    EXPECT_EQ(vm->Join().kind, vmm::ExitKind::kGuestReset);
  }
}

}  // namespace
}  // namespace sbx
