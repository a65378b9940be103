// End to end: a Linux guest with two vCPUs (the Debian rootfs and its
// agent) runs what a lost TLB flush or vCPU clocks that disagree would
// break (smp_probe, pushed into the guest as a static binary), is
// snapshotted while that load runs, and is restored: the load finishes on
// both vCPUs without an error, and each vCPU's clock went on from where the
// snapshot left it. Needs /dev/kvm and the built images (label e2e).
#include <fcntl.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

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

using ::testing::HasSubstr;
using ::testing::Not;
using e2e::Shell;
using e2e::Step;
using e2e::VmRunner;

constexpr int kCpus = 2;

// The value of `key=` in a smp_probe line, or -1.
int64_t Field(const std::string& line, const std::string& key) {
  size_t at = line.find(" " + key + "=");
  if (at == std::string::npos) return -1;
  int64_t v = -1;
  std::string rest = line.substr(at + key.size() + 2);
  if (!absl::SimpleAtoi(rest.substr(0, rest.find_first_of(" \n")), &v)) return -1;
  return v;
}

// Host threads that keep this machine's CPUs busy while they live, so the
// guest's vCPU threads get preempted on the host: KVM's PV TLB flush then
// takes its other path (a preempted vCPU is not sent an IPI; KVM flushes
// its TLB when it next runs), which a lost flush would break.
class HostLoad {
 public:
  explicit HostLoad(int threads) {
    for (int i = 0; i < threads; ++i) {
      threads_.emplace_back([this] {
        while (!stop_.load(std::memory_order_relaxed)) {
        }
      });
    }
  }
  ~HostLoad() {
    stop_ = true;
    for (std::thread& t : threads_) t.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

class SmpVmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // As e2e_linux_boot_test's SMP cases: a Linux guest with several vCPUs
    // can livelock the emulated KVM host (one CPU); this runs where
    // /dev/kvm works natively, hardware KVM or PVM.
    if (std::getenv("SBX_IN_KVM_VM") != nullptr) {
      GTEST_SKIP() << "a 2-vCPU Linux guest can livelock the emulated KVM host; "
                      "this test runs where /dev/kvm works natively";
    }
    SBX_REQUIRE(testing::CheckKvm());
    SBX_REQUIRE(testing::CheckImage("kernel/current/vmlinux"));
    SBX_REQUIRE(testing::CheckImage("rootfs/current/rootfs.ext4"));
    std::string pattern = ::testing::TempDir() + "smp_vm_XXXXXX";
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

TEST_F(SmpVmTest, TwoVcpusKeepMemoryAndOneClockAcrossASnapshot) {
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
  config.cpus = kCpus;
  config.memory_mib = 384;
  config.extra_cmdline = "sbx.upper=/dev/vdb";
  config.console = dir_ + "/console_boot.log";
  config.vsock = vmm::VsockConfig{.uds_path = dir_ + "/b.sock", .guest_cid = 3};
  const std::string snapshot = dir_ + "/snapshot";
  int64_t before_ns[2] = {0, 0};
  {
    Step("boot with 2 vCPUs");
    absl::StatusOr<std::unique_ptr<vmm::Machine>> machine = vmm::Machine::Create(config);
    ASSERT_TRUE(machine.ok()) << machine.status();
    VmRunner vm(std::move(*machine), config.console);
    agent::Client client(agent::NewVsockDialer(dir_ + "/b.sock", 1024));
    absl::StatusOr<double> ready = vm.WaitForAgent(client);
    ASSERT_TRUE(ready.ok()) << ready.status();
    EXPECT_THAT(vm.console(), HasSubstr("Brought up 1 node, 2 CPUs"));
    absl::StatusOr<std::string> online = Shell(client, "cat /sys/devices/system/cpu/online");
    ASSERT_TRUE(online.ok()) << online.status();
    EXPECT_EQ(absl::StripAsciiWhitespace(*online), "0-1");
    // One package with two cores, as `lscpu` would show it.
    absl::StatusOr<std::string> topology = Shell(
        client, "grep -E '^(physical id|core id)' /proc/cpuinfo | tr -s ' \t' ' '");
    ASSERT_TRUE(topology.ok()) << topology.status();
    EXPECT_EQ(*topology, "physical id : 0\ncore id : 0\nphysical id : 0\ncore id : 1\n");

    std::string probe = testing::ReadFileToString(SBX_SMP_PROBE);
    ASSERT_FALSE(probe.empty()) << SBX_SMP_PROBE;
    ASSERT_TRUE(client.WriteFileFromString("/root/smp_probe", probe, 0755).ok());

    Step("smp_probe tlb and clock, before the snapshot");
    absl::StatusOr<std::string> tlb = Shell(client, "/root/smp_probe tlb 5000 10");
    ASSERT_TRUE(tlb.ok()) << tlb.status();
    std::printf("[ guest ] %s", tlb->c_str());
    EXPECT_EQ(Field(*tlb, "errors"), 0) << *tlb;
    {
      Step("smp_probe tlb again, with the host's CPUs busy");
      HostLoad load(2);
      absl::StatusOr<std::string> busy = Shell(client, "/root/smp_probe tlb 5000 10");
      ASSERT_TRUE(busy.ok()) << busy.status();
      std::printf("[ guest ] with host load: %s", busy->c_str());
      EXPECT_EQ(Field(*busy, "errors"), 0) << *busy;
    }
    absl::StatusOr<std::string> clock = Shell(client, "/root/smp_probe clock 200000 5");
    ASSERT_TRUE(clock.ok()) << clock.status();
    std::printf("[ guest ] %s", clock->c_str());
    EXPECT_EQ(Field(*clock, "errors"), 0) << *clock;

    // The load the snapshot cuts through: both probes again, in the
    // background, their output in a file; "end" once both are done.
    Step("start the load, then pause + snapshot in its middle");
    ASSERT_TRUE(Shell(client,
                      "setsid sh -c '/root/smp_probe tlb 1000000 10; "
                      "/root/smp_probe clock 100000000 10; echo end' "
                      "</dev/null >/root/load.out 2>&1 &")
                    .ok());
    // The last clock reading of each vCPU before the snapshot.
    absl::StatusOr<std::string> last = Shell(client, "/root/smp_probe clock 2000 5");
    ASSERT_TRUE(last.ok()) << last.status();
    before_ns[0] = Field(*last, "cpu0_ns");
    before_ns[1] = Field(*last, "cpu1_ns");
    ASSERT_GT(before_ns[0], 0) << *last;
    ASSERT_GT(before_ns[1], 0) << *last;
    ASSERT_TRUE(vm.machine().Pause().ok());
    absl::Status snap = vm.machine().Snapshot(snapshot);
    ASSERT_TRUE(snap.ok()) << snap;
  }
  // Host time passes while the snapshot is on disk; the guest's monotonic
  // clock must not see it (nor go back).
  std::this_thread::sleep_for(std::chrono::seconds(2));

  Step("restore");
  vmm::RestoreOptions options;
  options.disk_paths = {rootfs(), disk};
  options.vsock_path = dir_ + "/r.sock";
  options.console = dir_ + "/console_restored.log";
  absl::StatusOr<std::unique_ptr<vmm::Machine>> machine =
      vmm::Machine::Restore(snapshot, options);
  ASSERT_TRUE(machine.ok()) << machine.status();
  VmRunner vm(std::move(*machine), *options.console);
  agent::Client client(agent::NewVsockDialer(*options.vsock_path, 1024));
  absl::StatusOr<double> ready = vm.WaitForAgent(client);
  ASSERT_TRUE(ready.ok()) << ready.status();
  std::string entropy(64, '\0');
  ASSERT_EQ(getrandom(entropy.data(), entropy.size(), 0), 64);
  ASSERT_TRUE(client.AfterRestore(entropy, e2e::UnixNowNs()).ok());

  Step("the load the snapshot cut through finishes without an error");
  std::string load;
  for (int i = 0; i < 300; ++i) {
    absl::StatusOr<std::string> out = client.ReadFileToString("/root/load.out");
    if (out.ok()) load = *out;
    if (load.find("end\n") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  std::printf("[ guest ] load across the snapshot:\n%s", load.c_str());
  ASSERT_THAT(load, HasSubstr("end\n")) << "the load did not finish";
  size_t clock_at = load.find("smp_probe clock:");
  ASSERT_NE(clock_at, std::string::npos) << load;
  std::string tlb_line = load.substr(0, clock_at);
  std::string clock_line = load.substr(clock_at);
  EXPECT_EQ(Field(tlb_line, "errors"), 0) << load;
  EXPECT_GT(Field(tlb_line, "rounds"), 0) << load;
  EXPECT_EQ(Field(clock_line, "errors"), 0) << load;
  EXPECT_GT(Field(clock_line, "rounds"), 1) << load;

  Step("both vCPUs run on, on one clock that went on from the snapshot");
  absl::StatusOr<std::string> online = Shell(client, "cat /sys/devices/system/cpu/online");
  ASSERT_TRUE(online.ok()) << online.status();
  EXPECT_EQ(absl::StripAsciiWhitespace(*online), "0-1");
  absl::StatusOr<std::string> clock = Shell(client, "/root/smp_probe clock 200000 10");
  ASSERT_TRUE(clock.ok()) << clock.status();
  std::printf("[ guest ] after the restore: %s", clock->c_str());
  EXPECT_EQ(Field(*clock, "errors"), 0) << *clock;
  for (int cpu = 0; cpu < kCpus; ++cpu) {
    int64_t now = Field(*clock, absl::StrCat("cpu", cpu, "_ns"));
    EXPECT_GT(now, before_ns[cpu]) << "cpu " << cpu << "'s clock went back";
    // The guest ran for a few minutes at most since; the 2 s on disk must
    // not show up as a jump of hours (a clock restored per vCPU from
    // another base).
    EXPECT_LT(now - before_ns[cpu], int64_t{600} * 1'000'000'000) << *clock;
  }
  absl::StatusOr<std::string> dmesg =
      Shell(client, "dmesg | grep -iE 'unstable|soft lockup|rcu.*stall|hung task' || true");
  ASSERT_TRUE(dmesg.ok()) << dmesg.status();
  EXPECT_EQ(*dmesg, "") << "the guest kernel complained";
  EXPECT_THAT(vm.console(), Not(HasSubstr("soft lockup")));
}

}  // namespace
}  // namespace sbx
