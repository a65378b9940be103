// End to end: a booted Linux guest with its agent up is snapshotted and
// restored (no boot): the agent answers in the restored VM and runs a
// command; two clones of one snapshot draw different bytes from
// /dev/urandom after the host's AfterRestore; the guest clock is within a
// second of the host's although the snapshot is seconds old. Needs
// /dev/kvm and the built images (label e2e).
#include <fcntl.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "base/test_facility.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "guest/client.h"
#include "tests/e2e/vm_runner.h"
#include "vmm/machine.h"

namespace sbx {
namespace {

using e2e::Shell;
using e2e::Step;
using e2e::VmRunner;

class SnapshotVmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SBX_REQUIRE(testing::CheckKvm());
    SBX_REQUIRE(testing::CheckImage("kernel/current/vmlinux"));
    SBX_REQUIRE(testing::CheckImage("rootfs/current/rootfs.ext4"));
    std::string pattern = ::testing::TempDir() + "snapshot_vm_XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  std::string rootfs() const {
    return testing::ImageCacheDir() + "/rootfs/current/rootfs.ext4";
  }

  std::string dir_;
};

TEST_F(SnapshotVmTest, RestoredClonesAnswerDifferAndKeepTime) {
  // Boot once, as a template is made.
  std::string disk = dir_ + "/upper.img";
  {
    int fd = open(disk.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, 128 << 20), 0);
    close(fd);
  }
  vmm::MachineConfig config;
  config.kernel = testing::ImageCacheDir() + "/kernel/current/vmlinux";
  config.disks = {{rootfs(), true}, {disk, false}};
  config.has_rootfs = true;
  config.cpus = 1;
  config.memory_mib = 384;
  config.extra_cmdline = "sbx.upper=/dev/vdb";
  config.console = dir_ + "/console_template.log";
  config.vsock = vmm::VsockConfig{.uds_path = dir_ + "/t.sock", .guest_cid = 3};
  std::string snapshot = dir_ + "/snapshot";
  {
    Step("boot the template");
    absl::StatusOr<std::unique_ptr<vmm::Machine>> machine =
        vmm::Machine::Create(config);
    ASSERT_TRUE(machine.ok()) << machine.status();
    VmRunner vm(std::move(*machine), config.console);
    agent::Client client(agent::NewVsockDialer(dir_ + "/t.sock", 1024));
    absl::StatusOr<double> ready = vm.WaitForAgent(client);
    ASSERT_TRUE(ready.ok()) << ready.status();
    ASSERT_TRUE(client.WriteFileFromString("/root/template.txt", "made before").ok());
    ASSERT_TRUE(client.Sync().ok());
    Step("pause + snapshot");
    ASSERT_TRUE(vm.machine().Pause().ok());
    absl::Status snap = vm.machine().Snapshot(snapshot);
    ASSERT_TRUE(snap.ok()) << snap;
  }
  // The snapshot gets old: without a clock step the clones would lag.
  std::this_thread::sleep_for(std::chrono::seconds(3));

  std::string random_bytes[2];
  for (int i = 0; i < 2; ++i) {
    Step(absl::StrCat("restore clone ", i));
    // Each clone gets its own copy of the writable disk as it was.
    std::string clone_disk = absl::StrCat(dir_, "/clone", i, ".img");
    std::filesystem::copy_file(disk, clone_disk);
    vmm::RestoreOptions options;
    options.disk_paths = {rootfs(), clone_disk};
    options.vsock_path = absl::StrCat(dir_, "/c", i, ".sock");
    options.console = absl::StrCat(dir_, "/console_clone", i, ".log");
    auto restore_start = std::chrono::steady_clock::now();
    absl::StatusOr<std::unique_ptr<vmm::Machine>> machine =
        vmm::Machine::Restore(snapshot, options);
    ASSERT_TRUE(machine.ok()) << machine.status();
    VmRunner vm(std::move(*machine), *options.console);
    agent::Client client(agent::NewVsockDialer(*options.vsock_path, 1024));
    absl::StatusOr<double> ready = vm.WaitForAgent(client);
    ASSERT_TRUE(ready.ok()) << ready.status();
    std::printf("[ restore ] clone %d: agent answered %.2f s after Restore "
                "began (emulated host: no product number)\n",
                i,
                std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                              restore_start)
                    .count());
    std::fflush(stdout);

    // What a host does after every restore: fresh entropy and the time.
    std::string entropy(64, '\0');
    ASSERT_EQ(getrandom(entropy.data(), entropy.size(), 0), 64);
    absl::Status after = client.AfterRestore(entropy, e2e::UnixNowNs());
    ASSERT_TRUE(after.ok()) << after;

    absl::StatusOr<std::string> kept = client.ReadFileToString("/root/template.txt");
    ASSERT_TRUE(kept.ok()) << kept.status();
    EXPECT_EQ(*kept, "made before");

    int64_t before_ns = e2e::UnixNowNs();
    absl::StatusOr<std::string> date = Shell(client, "date +%s.%N");
    int64_t after_ns = e2e::UnixNowNs();
    ASSERT_TRUE(date.ok()) << date.status();
    double guest_s = 0;
    ASSERT_TRUE(absl::SimpleAtod(absl::StripAsciiWhitespace(*date), &guest_s))
        << *date;
    EXPECT_GT(guest_s, before_ns / 1e9 - 1.0) << "guest clock behind the host";
    EXPECT_LT(guest_s, after_ns / 1e9 + 1.0) << "guest clock ahead of the host";

    absl::StatusOr<std::string> bytes =
        Shell(client, "head -c 32 /dev/urandom | od -An -tx1");
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    random_bytes[i] = *bytes;
  }
  EXPECT_NE(random_bytes[0], random_bytes[1])
      << "two clones of one snapshot drew the same random bytes";
}

}  // namespace
}  // namespace sbx
