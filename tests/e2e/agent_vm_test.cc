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
#include "base/test_facility.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "guest/client.h"
#include "tests/e2e/vm_runner.h"
#include "vmm/machine.h"

namespace sbx {
namespace {

using ::testing::HasSubstr;
using e2e::Step;
using e2e::VmRunner;

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

  std::unique_ptr<VmRunner> Boot(const std::string& name) {
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
    config.vsock = vmm::VsockConfig{.uds_path = dir_ + "/v.sock", .guest_cid = 3};
    absl::StatusOr<std::unique_ptr<vmm::Machine>> machine =
        vmm::Machine::Create(config);
    EXPECT_TRUE(machine.ok()) << machine.status();
    if (!machine.ok()) return nullptr;
    return std::make_unique<VmRunner>(std::move(*machine), config.console);
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
    std::unique_ptr<VmRunner> vm = Boot("first");
    ASSERT_NE(vm, nullptr);
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
        << vm->console();
  }
  {
    // A new VM from the same writable disk sees the file.
    std::unique_ptr<VmRunner> vm = Boot("second");
    ASSERT_NE(vm, nullptr);
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
