#include "vmm/config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sbx::vmm {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kHostRam = uint64_t{8} << 30;

std::string Message(const absl::Status& s) { return std::string(s.message()); }

std::string TempFile(const std::string& name, const std::string& content = "x") {
  std::string path = ::testing::TempDir() + name;
  std::ofstream(path) << content;
  return path;
}

TEST(ParseArgsTest, ParsesEveryFlag) {
  auto c = ParseArgs({"--kernel", "k", "--rootfs", "r", "--disk", "d1",
                      "--disk", "d2,ro", "--cpus", "4", "--memory-mib", "512",
                      "--cmdline", "quiet", "--console", "c.log", "--boot",
                      "pvh", "--no-rng"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->kernel, "k");
  ASSERT_EQ(c->disks.size(), 3u);
  EXPECT_EQ(c->disks[0].path, "r");
  EXPECT_TRUE(c->disks[0].read_only);
  EXPECT_TRUE(c->has_rootfs);
  EXPECT_FALSE(c->disks[1].read_only);
  EXPECT_EQ(c->disks[2].path, "d2");
  EXPECT_TRUE(c->disks[2].read_only);
  EXPECT_EQ(c->cpus, 4);
  EXPECT_EQ(c->memory_mib, 512u);
  EXPECT_EQ(c->extra_cmdline, "quiet");
  EXPECT_EQ(c->console, "c.log");
  EXPECT_EQ(c->boot, BootPreference::kPvh);
  EXPECT_FALSE(c->rng);
}

TEST(ParseArgsTest, RootfsComesFirstWhateverTheOrder) {
  auto c = ParseArgs({"--disk", "data", "--kernel", "k", "--rootfs", "root"});
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->disks[0].path, "root");
  EXPECT_EQ(c->disks[1].path, "data");
}

TEST(ParseArgsTest, ErrorsNameTheFlag) {
  EXPECT_THAT(Message(ParseArgs({}).status()), HasSubstr("--kernel is required"));
  EXPECT_THAT(Message(ParseArgs({"--kernel"}).status()), HasSubstr("--kernel needs a value"));
  EXPECT_THAT(Message(ParseArgs({"--kernel", "k", "--cpus", "two"}).status()),
              HasSubstr("--cpus: 'two' is not a number"));
  EXPECT_THAT(Message(ParseArgs({"--kernel", "k", "--memory-mib", "-5"}).status()),
              HasSubstr("not a number"));
  EXPECT_THAT(Message(ParseArgs({"--kernel", "k", "--frobnicate"}).status()),
              HasSubstr("unknown argument '--frobnicate'"));
  EXPECT_THAT(Message(ParseArgs({"--kernel", "k", "--boot", "bios"}).status()),
              HasSubstr("not auto, pvh or linux64"));
  EXPECT_EQ(ParseArgs({"--kernel", "k", "--rootfs", "a", "--rootfs", "b"}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ParseArgsTest, ParsesVsockWithAndWithoutCid) {
  auto c = ParseArgs({"--kernel", "k", "--vsock", "/run/v.sock"});
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(c->vsock.has_value());
  EXPECT_EQ(c->vsock->uds_path, "/run/v.sock");
  EXPECT_EQ(c->vsock->guest_cid, 3u);
  c = ParseArgs({"--kernel", "k", "--vsock", "/run/a,b.sock,cid=42"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vsock->uds_path, "/run/a,b.sock");
  EXPECT_EQ(c->vsock->guest_cid, 42u);
  EXPECT_FALSE(ParseArgs({"--kernel", "k"})->vsock.has_value());
}

TEST(ParseArgsTest, RestoreNeedsNoKernelAndTakesOnlyWhatMovesFiles) {
  auto c = ParseArgs({"--restore", "/snap", "--disk", "/d/disk.img", "--vsock",
                      "/d/v.sock", "--console", "/d/console.log", "--control",
                      "/d/control.sock", "--console-max-bytes", "4096"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->console_max_bytes, 4096u);
  EXPECT_EQ(ParseArgs({"--kernel", "k"})->console_max_bytes, uint64_t{16} << 20);
  EXPECT_THAT(Message(ParseArgs({"--kernel", "k", "--console-max-bytes", "lots"}).status()),
              HasSubstr("--console-max-bytes"));
  EXPECT_EQ(c->restore_dir, "/snap");
  EXPECT_EQ(c->control_path, "/d/control.sock");
  ASSERT_EQ(c->disks.size(), 1u);
  EXPECT_EQ(c->disks[0].path, "/d/disk.img");
  EXPECT_EQ(c->vsock->uds_path, "/d/v.sock");
  EXPECT_EQ(c->console, "/d/console.log");
  EXPECT_THAT(Message(ParseArgs({"--restore", "/snap", "--cpus", "2"}).status()),
              HasSubstr("--cpus cannot be used with --restore"));
  EXPECT_THAT(Message(ParseArgs({"--kernel", "k", "--restore", "/snap"}).status()),
              HasSubstr("--kernel cannot be used with --restore"));
  EXPECT_THAT(Message(ParseArgs({"--control", ""}).status()),
              HasSubstr("--control needs a socket path"));
  EXPECT_THAT(Message(ParseArgs({"--restore"}).status()),
              HasSubstr("--restore needs a value"));
}

TEST(ParseArgsTest, WorkingSetFlagsGoWithRestore) {
  auto c = ParseArgs({"--restore", "/snap"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->prefetch);
  EXPECT_FALSE(c->record_working_set_ms.has_value());
  c = ParseArgs({"--restore", "/snap", "--no-prefetch"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->prefetch);
  c = ParseArgs({"--restore", "/snap", "--record-working-set", "200"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->record_working_set_ms, 200u);
  EXPECT_THAT(Message(ParseArgs({"--kernel", "k", "--no-prefetch"}).status()),
              HasSubstr("--no-prefetch needs --restore"));
  EXPECT_THAT(
      Message(ParseArgs({"--kernel", "k", "--record-working-set", "5"}).status()),
      HasSubstr("--record-working-set needs --restore"));
  c = ParseArgs({"--kernel", "k", "--vsock", "/v.sock", "--snapshot-when-ready",
                 "/t", "--ready-timeout", "60", "--record-working-set", "100"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->snapshot_when_ready_dir, "/t");
  EXPECT_EQ(c->ready_timeout_s, 60u);
  EXPECT_EQ(c->record_working_set_ms, 100u);
  EXPECT_THAT(Message(ParseArgs({"--kernel", "k", "--snapshot-when-ready", "/t"})
                          .status()),
              HasSubstr("needs --vsock"));
  EXPECT_THAT(Message(ParseArgs({"--kernel", "k", "--vsock", "/v", "--snapshot-when-ready",
                                 "/t", "--ready-timeout", "0"})
                          .status()),
              HasSubstr("--ready-timeout"));
  EXPECT_THAT(Message(ParseArgs({"--restore", "/s", "--record-working-set", "0"})
                          .status()),
              HasSubstr("between 1 and 600000"));
  EXPECT_THAT(Message(ParseArgs({"--restore", "/s", "--record-working-set", "x"})
                          .status()),
              HasSubstr("--record-working-set"));
  EXPECT_THAT(Message(ParseArgs({"--restore", "/s", "--no-prefetch",
                                 "--record-working-set", "9"})
                          .status()),
              HasSubstr("pick one"));
}

TEST(ParseArgsTest, VsockErrorsNameTheFlag) {
  EXPECT_THAT(Message(ParseArgs({"--kernel", "k", "--vsock"}).status()),
              HasSubstr("--vsock needs a value"));
  EXPECT_THAT(Message(ParseArgs({"--kernel", "k", "--vsock", ",cid=5"}).status()),
              HasSubstr("--vsock needs a socket path"));
  EXPECT_THAT(Message(ParseArgs({"--kernel", "k", "--vsock", "v,cid=x"}).status()),
              HasSubstr("--vsock cid: 'x' is not a number"));
  EXPECT_THAT(Message(ParseArgs({"--kernel", "k", "--vsock", "a", "--vsock", "b"})
                          .status()),
              HasSubstr("--vsock given twice"));
}

TEST(ValidateConfigTest, RefusesBadVsockCidsAndPaths) {
  MachineConfig c;
  c.kernel = TempFile("vmlinux");
  c.vsock = VsockConfig{::testing::TempDir() + "ok.sock", 3};
  EXPECT_TRUE(ValidateConfig(c, kHostRam).ok());
  c.vsock->guest_cid = 2;
  EXPECT_THAT(Message(ValidateConfig(c, kHostRam)),
              HasSubstr("--vsock cid=2: must be 3 to 4294967294"));
  c.vsock->guest_cid = uint64_t{1} << 32;
  EXPECT_EQ(ValidateConfig(c, kHostRam).code(), absl::StatusCode::kInvalidArgument);
  c.vsock->guest_cid = 3;
  c.vsock->uds_path = "/tmp/" + std::string(100, 'v');
  EXPECT_THAT(Message(ValidateConfig(c, kHostRam)), HasSubstr("longer than 96 bytes"));
  c.vsock->uds_path = "/nonexistent/dir/v.sock";
  EXPECT_THAT(Message(ValidateConfig(c, kHostRam)),
              HasSubstr("directory /nonexistent/dir: No such file"));
  c.vsock->uds_path = TempFile("not_a_socket");
  EXPECT_THAT(Message(ValidateConfig(c, kHostRam)),
              HasSubstr("exists and is not a socket"));
}

TEST(ValidateConfigTest, AcceptsAGoodConfig) {
  MachineConfig c;
  c.kernel = TempFile("vmlinux");
  c.disks.push_back({TempFile("disk.img"), false});
  EXPECT_TRUE(ValidateConfig(c, kHostRam).ok());
}

TEST(ValidateConfigTest, RefusesBadCpuCounts) {
  MachineConfig c;
  c.kernel = TempFile("vmlinux");
  c.cpus = 0;
  EXPECT_THAT(Message(ValidateConfig(c, kHostRam)), HasSubstr("must be 1 to 32"));
  c.cpus = 33;
  EXPECT_EQ(ValidateConfig(c, kHostRam).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ValidateConfigTest, RefusesMemoryTooSmallOrBeyondTheHost) {
  MachineConfig c;
  c.kernel = TempFile("vmlinux");
  c.memory_mib = 8;
  EXPECT_THAT(Message(ValidateConfig(c, kHostRam)), HasSubstr("minimum is 16"));
  c.memory_mib = 9000;
  EXPECT_THAT(Message(ValidateConfig(c, kHostRam)),
              HasSubstr("more than this host's 8192 MiB"));
}

TEST(ValidateConfigTest, RefusesMissingKernelAndUnreadableDisks) {
  MachineConfig c;
  c.kernel = "/nonexistent/vmlinux";
  EXPECT_THAT(Message(ValidateConfig(c, kHostRam)),
              HasSubstr("--kernel /nonexistent/vmlinux: No such file"));
  c.kernel = TempFile("vmlinux");
  c.disks.push_back({"/nonexistent/disk", true});
  EXPECT_THAT(Message(ValidateConfig(c, kHostRam)),
              HasSubstr("disk /nonexistent/disk"));
  // A directory cannot be a read-write disk.
  c.disks = {{::testing::TempDir(), false}};
  EXPECT_EQ(ValidateConfig(c, kHostRam).code(), absl::StatusCode::kInvalidArgument);
}

TEST(HostMemoryTest, ReadsMemTotal) {
  auto bytes = HostMemoryBytes();
  ASSERT_TRUE(bytes.ok());
  EXPECT_GT(*bytes, uint64_t{64} << 20);
}

}  // namespace
}  // namespace sbx::vmm
