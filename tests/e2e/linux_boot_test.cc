// End to end: the real guest kernel (images/kernel) boots under sbx-vmm
// with the busybox rootfs (images/busybox) as a read-only virtio-blk root,
// runs init, which prints a marker and reboots, ending the VM. Needs
// /dev/kvm and the built images (label e2e).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <fstream>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

#include "base/test_facility.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "vmm/machine.h"

namespace sbx::vmm {
namespace {

using ::testing::HasSubstr;

// Generous: under an emulated KVM host, or on PVM with another test beside
// it, a boot takes minutes (a bzImage's decompressor runs emulated there:
// 240 s were not enough on 2026-12-04, two e2e binaries at a time).
constexpr int kBootDeadlineSeconds = 600;

struct BootCase {
  const char* name;
  const char* kernel;  // in the image cache
  int cpus;
};

void PrintTo(const BootCase& c, std::ostream* os) { *os << c.name; }

class LinuxBootTest : public ::testing::TestWithParam<BootCase> {};

TEST_P(LinuxBootTest, BootsToInitAndRebootsCleanly) {
  const BootCase& c = GetParam();
  SBX_REQUIRE(testing::CheckKvm());
  SBX_REQUIRE(testing::CheckImage(c.kernel));
  SBX_REQUIRE(testing::CheckImage("busybox/current/rootfs.ext4"));

  MachineConfig config;
  config.kernel = testing::ImageCacheDir() + "/" + c.kernel;
  config.disks.push_back(
      {testing::ImageCacheDir() + "/busybox/current/rootfs.ext4", true});
  config.has_rootfs = true;
  config.cpus = c.cpus;
  config.memory_mib = 256;
  config.console = ::testing::TempDir() + "linux_boot_" + c.name + ".log";

  auto start = std::chrono::steady_clock::now();
  auto machine = Machine::Create(config);
  ASSERT_TRUE(machine.ok()) << machine.status();
  // A boot that hangs must fail with its console, not hang the suite.
  absl::Mutex mu;
  bool done = false;
  std::thread watchdog([&] {
    absl::MutexLock lock(&mu);
    if (!mu.AwaitWithTimeout(absl::Condition(&done), absl::Seconds(kBootDeadlineSeconds))) {
      (*machine)->Stop();
    }
  });
  MachineExit exit = (*machine)->Run();
  {
    absl::MutexLock lock(&mu);
    done = true;
  }
  watchdog.join();
  double seconds = std::chrono::duration<double>(
                       std::chrono::steady_clock::now() - start).count();
  std::string console = testing::ReadFileToString(config.console);
  // Wall time for the issue note; under an emulated KVM host it is no
  // product number.
  std::printf("[ boot ] %s: %.1f s wall, exit: %s\n", c.name, seconds,
              exit.description.c_str());

  EXPECT_EQ(exit.kind, ExitKind::kGuestReset) << exit.description << "\n"
                                              << console;
  EXPECT_THAT(console, HasSubstr("SBX-E2E-BOOT-OK")) << console;
  // virtio-blk carried the root filesystem; the kernel saw every vCPU.
  EXPECT_THAT(console, HasSubstr("vda")) << console;
  if (c.cpus > 1) {
    EXPECT_THAT(console, HasSubstr("Brought up 1 node, " +
                                   std::to_string(c.cpus) + " CPUs"))
        << console;
    // One package of c.cpus cores, as the MP table and CPUID say; not a
    // package per vCPU (what a guest makes of an incomplete CPUID leaf 0xb).
    EXPECT_THAT(console, HasSubstr("smpboot: Max logical packages: 1")) << console;
    EXPECT_THAT(console, ::testing::Not(HasSubstr("to logical die"))) << console;
  }
}

// Under the emulated KVM host (scripts/in-kvm-vm sets SBX_IN_KVM_VM; one
// emulated CPU), a guest with several vCPUs can livelock that host, so the
// SMP boots run only where /dev/kvm works natively (hardware KVM or PVM).
// They are left out, not skipped, and say so.
std::vector<BootCase> Cases() {
  std::vector<BootCase> cases = {
      {"pvh_vmlinux", "kernel/current/vmlinux", 1},
      {"bzimage_64bit", "kernel/current/bzImage", 1},
  };
  if (std::getenv("SBX_IN_KVM_VM") == nullptr) {
    cases.push_back({"pvh_vmlinux_2cpus", "kernel/current/vmlinux", 2});
    cases.push_back({"pvh_vmlinux_4cpus", "kernel/current/vmlinux", 4});
  } else {
    std::printf("[ note ] pvh_vmlinux_2cpus and _4cpus left out: emulated KVM host\n");
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(
    Images, LinuxBootTest, ::testing::ValuesIn(Cases()),
    [](const ::testing::TestParamInfo<BootCase>& info) { return info.param.name; });

}  // namespace
}  // namespace sbx::vmm
