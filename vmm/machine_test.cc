// Boots the freestanding test guests in a real KVM VM (label kvm).
#include "vmm/machine.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>

#include "base/test_facility.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "base/unique_fd.h"
#include "vmm/boot/cpu_setup.h"
#include "vmm/testing/guests/guests.h"

namespace sbx::vmm {
namespace {

using ::testing::HasSubstr;

class MachineTest : public ::testing::Test {
 protected:
  MachineConfig Config(const std::string& guest, int cpus = 1) {
    MachineConfig c;
    c.kernel = guests::GuestPath(guest);
    c.cpus = cpus;
    c.memory_mib = 64;
    c.console = ::testing::TempDir() + "console_" + guest + ".log";
    return c;
  }
};

TEST_F(MachineTest, HelloGuestReadsItsPvhStartInfoAndReboots) {
  SBX_REQUIRE(testing::CheckKvm());
  MachineConfig config = Config("hello");
  config.extra_cmdline = "sbx.test=1";
  auto m = Machine::Create(config);
  ASSERT_TRUE(m.ok()) << m.status();
  MachineExit exit = (*m)->Run();
  EXPECT_EQ(exit.kind, ExitKind::kGuestReset) << exit.description;
  EXPECT_EQ(ExitStatus(exit.kind), 0);
  std::string console = testing::ReadFileToString(config.console);
  EXPECT_THAT(console, HasSubstr("sbx-guest: hello"));
  EXPECT_THAT(console, HasSubstr("start_info magic=336ec578"));
  EXPECT_THAT(console, HasSubstr("sbx.test=1"));
  EXPECT_THAT(console, HasSubstr("console=ttyS0"));
  // 64 MiB less the 385 KiB legacy hole below 1 MiB.
  EXPECT_THAT(console, HasSubstr("ram_kib=65151"));
  EXPECT_THAT(console, HasSubstr("sbx-guest: bye"));
}

TEST_F(MachineTest, ExitsAreDecodedAndUnclaimedAccessesReadAllOnes) {
  SBX_REQUIRE(testing::CheckKvm());
  MachineConfig config = Config("exits");
  auto m = Machine::Create(config);
  ASSERT_TRUE(m.ok()) << m.status();
  MachineExit exit = (*m)->Run();
  EXPECT_EQ(exit.kind, ExitKind::kGuestReset) << exit.description;
  std::string console = testing::ReadFileToString(config.console);
  EXPECT_THAT(console, HasSubstr("mmio-read=ffffffff"));
  EXPECT_THAT(console, HasSubstr("pio-read=ff"));
  EXPECT_THAT(console, HasSubstr("rep-outsb-ok"));
  EXPECT_THAT(console, HasSubstr("round-trips=10000"));
}

TEST_F(MachineTest, TripleFaultEndsTheVmWithItsOwnExitAndRip) {
  SBX_REQUIRE(testing::CheckKvm());
  MachineConfig config = Config("triple_fault");
  auto m = Machine::Create(config);
  ASSERT_TRUE(m.ok()) << m.status();
  MachineExit exit = (*m)->Run();
  EXPECT_EQ(exit.kind, ExitKind::kTripleFault) << exit.description;
  EXPECT_EQ(ExitStatus(exit.kind), 3);
  EXPECT_THAT(exit.description, HasSubstr("triple-faulted"));
  EXPECT_THAT(exit.description, HasSubstr("rip=0x"));
  EXPECT_THAT(testing::ReadFileToString(config.console), HasSubstr("about to triple fault"));
  EXPECT_THAT(testing::ReadFileToString(config.console), ::testing::Not(HasSubstr("still alive")));
}

TEST_F(MachineTest, SeveralVcpusStopWhenTheBootCpuReboots) {
  SBX_REQUIRE(testing::CheckKvm());
  // The other vCPUs wait for a SIPI that never comes; the VM must still end.
  MachineConfig config = Config("hello", /*cpus=*/4);
  auto m = Machine::Create(config);
  ASSERT_TRUE(m.ok()) << m.status();
  MachineExit exit = (*m)->Run();
  EXPECT_EQ(exit.kind, ExitKind::kGuestReset) << exit.description;
  EXPECT_THAT(testing::ReadFileToString(config.console), HasSubstr("sbx-guest: bye"));
}

// guest_smp (vmm/testing/guests): the boot CPU finds the others in the MP
// table and starts each with INIT and Startup IPIs; then all of them add
// to one counter with locked instructions.
class SmpGuestTest : public MachineTest, public ::testing::WithParamInterface<int> {};

TEST_P(SmpGuestTest, ApsStartThroughInitAndSipiAndShareMemory) {
  SBX_REQUIRE(testing::CheckKvm());
  const int cpus = GetParam();
  MachineConfig config = Config("smp", cpus);
  config.console = ::testing::TempDir() + "console_smp_" + std::to_string(cpus) + ".log";
  auto m = Machine::Create(config);
  ASSERT_TRUE(m.ok()) << m.status();
  MachineExit exit = (*m)->Run();
  std::string console = testing::ReadFileToString(config.console);
  EXPECT_EQ(exit.kind, ExitKind::kGuestReset) << exit.description << "\n" << console;
  EXPECT_THAT(console, HasSubstr("the MP table lists " + std::to_string(cpus) +
                                 " cpus; boot cpu apic id 0"));
  for (int i = 1; i < cpus; ++i) {
    // Each AP ran its own code: its LAPIC and its CPUID say who it is.
    const std::string id = std::to_string(i);
    EXPECT_THAT(console, HasSubstr("smp: cpu " + id + " up, cpuid apic id " + id)) << console;
  }
  const std::string sum = std::to_string(cpus * 20000);
  EXPECT_THAT(console, HasSubstr("counter=" + sum + " expected=" + sum + " ok")) << console;
  EXPECT_THAT(console, HasSubstr("smp: all " + std::to_string(cpus) + " cpus done"));
  EXPECT_THAT(console, ::testing::Not(HasSubstr("FAILED")));
}

INSTANTIATE_TEST_SUITE_P(Cpus, SmpGuestTest, ::testing::Values(2, 4),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::to_string(info.param) + "cpus";
                         });

// The guest sees KVM's hypercall-based paravirtual features exactly where a
// hypercall returns (HostKvmTraitsFor). guest_smp's probe makes one from an
// AP and prints the feature leaf it was given.
TEST_F(MachineTest, GuestSeesHypercallFeaturesOnlyWhereHypercallsReturn) {
  SBX_REQUIRE(testing::CheckKvm());
  MachineConfig config = Config("smp", 2);
  config.extra_cmdline = "sbx.smp=hypercall";
  auto m = Machine::Create(config);
  ASSERT_TRUE(m.ok()) << m.status();
  MachineExit exit = (*m)->Run();
  std::string console = testing::ReadFileToString(config.console);
  ASSERT_EQ(exit.kind, ExitKind::kGuestReset) << exit.description << "\n" << console;
  ASSERT_THAT(console, HasSubstr("smp: all 2 cpus done")) << console;
  size_t at = console.find("kvm features=");
  ASSERT_NE(at, std::string::npos) << console;
  uint32_t features = static_cast<uint32_t>(
      std::strtoul(console.c_str() + at + std::strlen("kvm features="), nullptr, 16));
  if (HostKvmIsPvm()) {
    EXPECT_EQ(features & kKvmHypercallFeatures, 0u) << console;
    // If this fails, PVM answers hypercalls now: HostKvmTraitsFor may let
    // guests use them again.
    EXPECT_THAT(console, HasSubstr("smp: hypercall did not return")) << console;
  } else {
    // -KVM_ENOSYS for an unknown hypercall number.
    EXPECT_THAT(console, HasSubstr("smp: hypercall returned rax=-1000")) << console;
  }
}

TEST_F(MachineTest, StopEndsASpinningGuest) {
  SBX_REQUIRE(testing::CheckKvm());
  MachineConfig config = Config("spin", /*cpus=*/2);
  auto m = Machine::Create(config);
  ASSERT_TRUE(m.ok()) << m.status();
  std::thread stopper([&] {
    // Wait (bounded) until the guest says it runs, then stop it.
    for (int i = 0; i < 6000; ++i) {
      if (testing::ReadFileToString(config.console).find("spinning") != std::string::npos) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    (*m)->Stop();
  });
  MachineExit exit = (*m)->Run();
  stopper.join();
  EXPECT_EQ(exit.kind, ExitKind::kGuestReset);
  EXPECT_EQ(exit.description, "stopped by the VMM");
  EXPECT_THAT(testing::ReadFileToString(config.console), HasSubstr("sbx-guest: spinning"));
}

std::string MakeDisk(const std::string& name, size_t bytes) {
  std::string path = ::testing::TempDir() + name;
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      << std::string(bytes, '\0');
  return path;
}

TEST_F(MachineTest, BlkGuestWritesReadsFlushesAndIsRefusedPastTheEnd) {
  SBX_REQUIRE(testing::CheckKvm());
  MachineConfig config = Config("blk");
  std::string disk = MakeDisk("blk_rw.img", 1 << 20);
  config.disks.push_back({disk, false});
  auto m = Machine::Create(config);
  ASSERT_TRUE(m.ok()) << m.status();
  // The disk is the first device, the entropy device the second.
  EXPECT_THAT((*m)->cmdline(), HasSubstr("virtio_mmio.device=512@0xd0000000:5 "
                                         "virtio_mmio.device=512@0xd0001000:6"));
  MachineExit exit = (*m)->Run();
  EXPECT_EQ(exit.kind, ExitKind::kGuestReset) << exit.description;
  std::string console = testing::ReadFileToString(config.console);
  EXPECT_THAT(console, HasSubstr("blk: device at d0000000"));
  EXPECT_THAT(console, HasSubstr("blk: capacity=2048"));
  EXPECT_THAT(console, HasSubstr("blk: write status=0"));
  EXPECT_THAT(console, HasSubstr("blk: read status=0"));
  EXPECT_THAT(console, HasSubstr("blk: read matches write"));
  EXPECT_THAT(console, HasSubstr("blk: flush status=0"));
  EXPECT_THAT(console, HasSubstr("get-id status=0 id=sbx-disk-0"));
  EXPECT_THAT(console, HasSubstr("blk: read past end status=1"));  // IOERR
  // The guest's write reached the host file: sector 1 holds i ^ 0x5a.
  std::string bytes = testing::ReadFileToString(disk);
  ASSERT_EQ(bytes.size(), 1u << 20);
  for (int i = 0; i < 512; ++i) {
    ASSERT_EQ(static_cast<uint8_t>(bytes[512 + i]), static_cast<uint8_t>(i ^ 0x5a)) << i;
  }
}

TEST_F(MachineTest, ReadOnlyDiskRefusesTheGuestsWrite) {
  SBX_REQUIRE(testing::CheckKvm());
  MachineConfig config = Config("blk");
  std::string disk = MakeDisk("blk_ro.img", 1 << 20);
  config.disks.push_back({disk, true});
  auto m = Machine::Create(config);
  ASSERT_TRUE(m.ok()) << m.status();
  MachineExit exit = (*m)->Run();
  EXPECT_EQ(exit.kind, ExitKind::kGuestReset) << exit.description;
  std::string console = testing::ReadFileToString(config.console);
  EXPECT_THAT(console, HasSubstr("blk: write status=1"));  // IOERR
  EXPECT_EQ(testing::ReadFileToString(disk), std::string(1 << 20, '\0'));
}

TEST_F(MachineTest, HostileBlkDriverBreaksOnlyItsOwnRequests) {
  SBX_REQUIRE(testing::CheckKvm());
  MachineConfig config = Config("hostile_blk");
  config.disks.push_back({MakeDisk("blk_hostile.img", 1 << 20), false});
  auto m = Machine::Create(config);
  ASSERT_TRUE(m.ok()) << m.status();
  MachineExit exit = (*m)->Run();
  // The VMM survived every attack and the guest ended the VM itself.
  EXPECT_EQ(exit.kind, ExitKind::kGuestReset) << exit.description;
  std::string console = testing::ReadFileToString(config.console);
  EXPECT_THAT(console, HasSubstr("hostile: descriptor loop -> "));
  EXPECT_THAT(console, HasSubstr("hostile: avail index jump -> "));
  EXPECT_THAT(console, HasSubstr("hostile: bad register writes done"));
  EXPECT_THAT(console, HasSubstr("hostile: good read after attacks status=0"));
  EXPECT_THAT(console, ::testing::Not(HasSubstr("re-init failed")));
}

TEST_F(MachineTest, VsockGuestConnectsToAHostEchoServer) {
  SBX_REQUIRE(testing::CheckKvm());
  MachineConfig config = Config("vsock");
  const std::string uds =
      ::testing::TempDir() + "vsock_" + std::to_string(::getpid()) + ".sock";
  config.vsock = VsockConfig{uds, 3};
  // The host side of guest connections to port 1024: an echo server.
  const std::string port_path = uds + "_1024";
  ::unlink(port_path.c_str());
  UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, port_path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr),
                   sizeof(addr)),
            0);
  ASSERT_EQ(::listen(listener.get(), 4), 0);
  std::string received;
  bool eof = false;
  std::thread server([&] {
    // Bounded: a guest that never connects must not hang the test.
    pollfd p = {.fd = listener.get(), .events = POLLIN, .revents = 0};
    if (::poll(&p, 1, 300'000) != 1) return;
    UniqueFd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    char buf[256];
    for (;;) {
      pollfd q = {.fd = conn.get(), .events = POLLIN, .revents = 0};
      if (::poll(&q, 1, 300'000) != 1) return;
      ssize_t n = ::read(conn.get(), buf, sizeof(buf));
      if (n <= 0) {
        eof = n == 0;
        return;
      }
      received.append(buf, static_cast<size_t>(n));
      if (::send(conn.get(), buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n) return;
    }
  });
  {
    auto m = Machine::Create(config);
    if (!m.ok()) {
      ::shutdown(listener.get(), SHUT_RDWR);
      server.join();
      FAIL() << m.status();
    }
    ASSERT_NE((*m)->vsock(), nullptr);
    // No disks: the entropy device first, then vsock.
    EXPECT_THAT((*m)->cmdline(), HasSubstr("virtio_mmio.device=512@0xd0001000:6"));
    struct stat st;
    EXPECT_EQ(::stat(uds.c_str(), &st), 0);
    MachineExit exit = (*m)->Run();
    EXPECT_EQ(exit.kind, ExitKind::kGuestReset) << exit.description;
  }
  ::shutdown(listener.get(), SHUT_RDWR);
  server.join();
  ::unlink(port_path.c_str());
  std::string console = testing::ReadFileToString(config.console);
  EXPECT_THAT(console, HasSubstr("vsock: cid=3"));
  EXPECT_THAT(console, HasSubstr("vsock: connected"));
  EXPECT_THAT(console, HasSubstr("vsock: echo matches"));
  EXPECT_THAT(console, HasSubstr("vsock: closed by rst"));
  EXPECT_THAT(console, HasSubstr("vsock: done"));
  EXPECT_EQ(received, "hello from the vsock guest");
  EXPECT_TRUE(eof);  // the guest's close reached the host socket
  // The VMM removed its socket file.
  struct stat st;
  EXPECT_NE(::stat(uds.c_str(), &st), 0);
}

}  // namespace
}  // namespace sbx::vmm
