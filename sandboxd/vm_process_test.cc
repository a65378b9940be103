// What of the sbx-vmm backend works without KVM: its command lines, the
// /proc parsing, Adopt's refusals, and Start and BuildTemplate against
// stand-in "sbx-vmm" scripts that fail, hang or fake a template: errors say
// why, and nothing is left running or lying around. The cgroup cases need
// root (and skip without it). The real thing: tests/e2e/vm_process_test.cc.
#include "sandboxd/vm_process.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/test_facility.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sbx::sandboxd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

namespace fs = std::filesystem;

void WriteFile(const std::string& path, const std::string& text, mode_t mode = 0644) {
  std::ofstream(path) << text;
  ASSERT_EQ(::chmod(path.c_str(), mode), 0) << path;
}

// True when this process has no child left (running or zombie).
bool NoChildren() {
  return ::waitpid(-1, nullptr, WNOHANG) < 0 && errno == ECHILD;
}

bool IsSocket(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

// Leaves a bound (then closed) unix socket at `path`, as a VMM that died does.
void MakeStaleSocket(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  ASSERT_LT(path.size(), sizeof(addr.sun_path));
  path.copy(addr.sun_path, path.size());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << path;
  ::close(fd);
}

TEST(VmArgvTest, RestoreRunsTheSnapshotWithTheSandboxsFiles) {
  VmSpec spec;
  spec.dir = "/s/sb1";
  spec.snapshot_dir = "/s/sb1/snapshot";
  spec.template_snapshot_dir = "/t/snapshot";
  spec.disks = {"/t/rootfs.ext4", "/s/sb1/disk.img"};
  EXPECT_THAT(RestoreArgv("/bin/sbx-vmm", spec),
              ElementsAre("/bin/sbx-vmm", "--restore", "/s/sb1/snapshot", "--disk",
                          "/t/rootfs.ext4", "--disk", "/s/sb1/disk.img", "--vsock",
                          "/s/sb1/vm/vsock.sock", "--control", "/s/sb1/vm/control.sock",
                          "--console", "/s/sb1/vm/console.log"));
}

TEST(VmArgvTest, TemplateBootsAndSnapshotsWhenReady) {
  TemplateSpec spec;
  spec.dir = "/t/final";
  spec.kernel = "/k/vmlinux";
  spec.rootfs = "/r/rootfs.ext4";
  spec.vcpus = 2;
  spec.memory_mib = 384;
  spec.ready_timeout_ms = 90'500;  // rounded up to whole seconds
  EXPECT_THAT(
      TemplateArgv("/bin/sbx-vmm", spec, "/t/tmp", 2000),
      ElementsAre("/bin/sbx-vmm", "--kernel", "/k/vmlinux", "--rootfs", "/r/rootfs.ext4",
                  "--disk", "/t/tmp/disk.img", "--cpus", "2", "--memory-mib", "384",
                  "--cmdline", "sbx.upper=late", "--console", "/t/tmp/vm/console.log",
                  "--vsock", "/t/tmp/vm/vsock.sock", "--snapshot-when-ready",
                  "/t/tmp/vm/snapshot", "--ready-timeout", "91", "--record-working-set",
                  "2000"));
  std::vector<std::string> no_ws = TemplateArgv("/bin/sbx-vmm", spec, "/t/tmp", 0);
  EXPECT_EQ(no_ws.back(), "91");
}

// The ext4 superblock of the disk image at `path` (1024 bytes at 1024).
struct Superblock {
  uint16_t magic = 0;
  uint64_t blocks = 0;
  uint64_t reserved_blocks = 0;
  uint64_t block_size = 0;
  bool has_journal = false;
  std::string label;
};
Superblock ReadSuperblock(const std::string& path) {
  std::string sb(1024, '\0');
  std::ifstream in(path, std::ios::binary);
  in.seekg(1024);
  in.read(sb.data(), static_cast<std::streamsize>(sb.size()));
  auto le = [&](size_t offset, size_t bytes) {
    uint64_t v = 0;
    for (size_t i = 0; i < bytes; ++i) {
      v |= uint64_t{static_cast<unsigned char>(sb[offset + i])} << (8 * i);
    }
    return v;
  };
  Superblock out;
  out.magic = static_cast<uint16_t>(le(0x38, 2));
  const bool is64 = (le(0x60, 4) & 0x80) != 0;  // INCOMPAT_64BIT
  out.blocks = le(0x04, 4) | (is64 ? le(0x150, 4) << 32 : 0);
  out.reserved_blocks = le(0x08, 4) | (is64 ? le(0x154, 4) << 32 : 0);
  out.block_size = uint64_t{1024} << le(0x18, 4);
  out.has_journal = (le(0x5C, 4) & 0x4) != 0;  // COMPAT_HAS_JOURNAL
  out.label = std::string(sb.data() + 0x78, 16);
  out.label.resize(out.label.find('\0'));
  return out;
}

class SandboxDiskTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "sbdisk_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

TEST_F(SandboxDiskTest, ASparseSlotWithAnExt4OfTheQuota) {
  const std::string disk = dir_ + "/disk.img";
  const uint64_t slot = uint64_t{64} << 30;  // 64 GiB, as a template's default
  absl::Status made = MakeSandboxDisk(disk, slot, 64);
  ASSERT_TRUE(made.ok()) << made;
  struct stat st;
  ASSERT_EQ(::stat(disk.c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), slot);
  // Sparse: metadata and the journal only.
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, uint64_t{16} << 20);
  const Superblock sb = ReadSuperblock(disk);
  EXPECT_EQ(sb.magic, 0xEF53);
  EXPECT_EQ(sb.blocks * sb.block_size, uint64_t{64} << 20);
  EXPECT_EQ(sb.block_size, 4096u);
  EXPECT_EQ(sb.reserved_blocks, 0u);
  EXPECT_TRUE(sb.has_journal);
  EXPECT_EQ(sb.label, "sbx-upper");
  // What the guest's e2fsck -p will find: a clean filesystem.
  for (const char* e2fsck : {"/sbin/e2fsck", "/usr/sbin/e2fsck"}) {
    if (::access(e2fsck, X_OK) != 0) continue;
    EXPECT_EQ(std::system(absl::StrCat(e2fsck, " -fn ", disk, " >/dev/null 2>&1").c_str()), 0);
    break;
  }
}

TEST_F(SandboxDiskTest, NeverOverwritesAFile) {
  const std::string disk = dir_ + "/disk.img";
  WriteFile(disk, "the sandbox's files");
  absl::Status made = MakeSandboxDisk(disk, uint64_t{1} << 30, 64);
  EXPECT_TRUE(absl::IsAlreadyExists(made)) << made;
  EXPECT_EQ(testing::ReadFileToString(disk), "the sandbox's files");
}

TEST_F(SandboxDiskTest, BadSizesAndFailuresLeaveNothing) {
  const std::string disk = dir_ + "/disk.img";
  EXPECT_TRUE(absl::IsInvalidArgument(MakeSandboxDisk(disk, uint64_t{1} << 30, 8)));
  EXPECT_TRUE(absl::IsInvalidArgument(MakeSandboxDisk(disk, uint64_t{64} << 20, 128)));
  EXPECT_TRUE(absl::IsInvalidArgument(MakeSandboxDisk(disk, (uint64_t{1} << 30) + 1, 64)));
  EXPECT_TRUE(absl::IsInvalidArgument(MakeSandboxDisk("disk.img", uint64_t{1} << 30, 64)));
  EXPECT_FALSE(fs::exists(disk));
  EXPECT_FALSE(MakeSandboxDisk(dir_ + "/no/such/dir/disk.img", uint64_t{1} << 30, 64).ok());
  // A slot larger than this filesystem's largest file (ext4: 16 TiB) fails
  // after the file was created: it is removed again.
  absl::Status huge = MakeSandboxDisk(disk, uint64_t{1} << 50, 64);
  if (huge.ok()) {
    std::printf("note: %s takes a 1 PiB file; the cleanup after a failure is not exercised\n",
                dir_.c_str());
  } else {
    EXPECT_FALSE(fs::exists(disk)) << huge;
  }
  EXPECT_TRUE(fs::is_empty(dir_) || huge.ok());
}

TEST(ProcStatTest, StartTicksCountFieldsFromTheLastParenthesis) {
  // The command name may hold spaces and ')'.
  const std::string stat =
      "4242 (we ird) (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 "
      "987654321 1000 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0\n";
  absl::StatusOr<uint64_t> ticks = ParseStartTicks(stat);
  ASSERT_TRUE(ticks.ok()) << ticks.status();
  EXPECT_EQ(*ticks, 987654321u);
  EXPECT_FALSE(ParseStartTicks("4242 no parenthesis").ok());
  EXPECT_FALSE(ParseStartTicks("4242 (short) S 1 2 3").ok());
}

TEST(ProcStatTest, OwnStartTicksAndAGonePid) {
  absl::StatusOr<uint64_t> mine = ProcessStartTicks(::getpid());
  ASSERT_TRUE(mine.ok()) << mine.status();
  EXPECT_GT(*mine, 0u);
  pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);
  EXPECT_TRUE(absl::IsNotFound(ProcessStartTicks(child).status()));
}

TEST(DescribeExitTest, SaysHowAProcessEnded) {
  EXPECT_EQ(DescribeExit(CLD_EXITED, 2), "exited with status 2");
  EXPECT_EQ(DescribeExit(CLD_KILLED, SIGKILL), "killed by signal 9 (SIGKILL)");
  EXPECT_EQ(DescribeExit(CLD_DUMPED, SIGSEGV), "killed by signal 11 (SIGSEGV), core dumped");
}

class VmProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "vmproc_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    root_ = pattern;
    sandbox_ = root_ + "/sb";
    fs::create_directories(sandbox_);
    tpl_ = root_ + "/tpl";
    fs::create_directories(tpl_);
    WriteFile(tpl_ + "/vmstate", "not really");
    WriteFile(root_ + "/rootfs.ext4", "");
    WriteFile(sandbox_ + "/disk.img", "");
    bin_ = root_ + "/bin";
    fs::create_directories(bin_);
  }
  void TearDown() override {
    if (cgroups_.has_value()) {
      for (const std::string& dir : cgroups_->parent_dirs()) ::rmdir(dir.c_str());
    }
    if (!root_.empty()) fs::remove_all(root_);
  }

  // A stand-in sbx-vmm: a shell script.
  std::string FakeVmm(const std::string& body) {
    const std::string path = bin_ + "/sbx-vmm";
    WriteFile(path, "#!/bin/sh\n" + body + "\n", 0755);
    return path;
  }

  VmSpec Spec() const {
    VmSpec spec;
    spec.dir = sandbox_;
    spec.snapshot_dir = tpl_;
    spec.template_snapshot_dir = tpl_;
    spec.disks = {root_ + "/rootfs.ext4", sandbox_ + "/disk.img"};
    spec.ready_timeout_ms = 400;
    return spec;
  }

  // Real cgroups for the VMs (root only; skips otherwise).
  void UseCgroups() {
    testing::FacilityCheck root;
    root.available = ::geteuid() == 0;
    root.reason = "creating cgroups needs root";
    SBX_REQUIRE(root);
    absl::StatusOr<CgroupRoot> opened =
        CgroupRoot::Open("/sys/fs/cgroup", absl::StrCat("sbx-vmtest-", ::getpid()));
    ASSERT_TRUE(opened.ok()) << opened.status();
    cgroups_ = *opened;
  }

  std::unique_ptr<VmBackend> Backend(const std::string& binary) {
    VmmBackendOptions options;
    options.vmm_binary = binary;
    options.cgroups = cgroups_;
    options.progress_interval_ms = 200;
    return NewVmmBackend(options);
  }

  std::string root_, sandbox_, tpl_, bin_;
  std::optional<CgroupRoot> cgroups_;
};

TEST_F(VmProcessTest, StartWithoutASnapshotSaysSoAndStartsNothing) {
  VmSpec spec = Spec();
  spec.snapshot_dir = root_ + "/no-such-snapshot";
  absl::StatusOr<std::unique_ptr<Vm>> vm = Backend(FakeVmm("exit 0"))->Start(spec);
  ASSERT_FALSE(vm.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(vm.status())) << vm.status();
  EXPECT_THAT(vm.status().message(), HasSubstr(spec.snapshot_dir));
  EXPECT_TRUE(NoChildren());
  EXPECT_FALSE(fs::exists(sandbox_ + "/vmm.log"));
}

TEST_F(VmProcessTest, RefusesBadSpecs) {
  auto backend = Backend(FakeVmm("exit 0"));
  VmSpec relative = Spec();
  relative.dir = "sb";
  EXPECT_TRUE(absl::IsInvalidArgument(backend->Start(relative).status()));
  VmSpec no_disk = Spec();
  no_disk.disks.push_back(root_ + "/missing.img");
  EXPECT_TRUE(absl::IsInvalidArgument(backend->Start(no_disk).status()));
  VmSpec bad_name = Spec();
  bad_name.cgroup_name = "../etc";
  EXPECT_TRUE(absl::IsInvalidArgument(backend->Start(bad_name).status()));
  EXPECT_TRUE(absl::IsFailedPrecondition(
      Backend(root_ + "/bin/nothing")->Start(Spec()).status()));
  for (const char* device : {"/dev/sda", "/dev/vdb1", "vdb", "/dev/vd"}) {
    VmSpec bad_device = Spec();
    bad_device.attach_device = device;
    absl::Status status = backend->Start(bad_device).status();
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << device << ": " << status;
    EXPECT_THAT(status.message(), HasSubstr("/dev/vd[a-z]"));
  }
  VmSpec no_writable_disk = Spec();
  no_writable_disk.attach_device = "/dev/vdb";
  no_writable_disk.disks.pop_back();
  EXPECT_TRUE(absl::IsInvalidArgument(backend->Start(no_writable_disk).status()));
  EXPECT_TRUE(NoChildren());
}

TEST_F(VmProcessTest, AVmmThatFailsIsReportedWithItsStderrAndConsole) {
  // The VM's own files are in vm/ (the jailed VMM's directory).
  ASSERT_EQ(::mkdir((sandbox_ + "/vm").c_str(), 0700), 0);
  MakeStaleSocket(sandbox_ + "/vm/vsock.sock");
  MakeStaleSocket(sandbox_ + "/vm/control.sock");
  WriteFile(sandbox_ + "/vm/console.log", "the previous run's console\n");
  const std::string vmm = FakeVmm(
      "for a; do last=$a; done\n"  // --console FILE comes last
      "echo 'guest said goodbye' >> \"$last\"\n"
      "echo 'sbx-vmm: snapshot: bad magic' >&2\n"
      "exit 2");
  absl::StatusOr<std::unique_ptr<Vm>> vm = Backend(vmm)->Start(Spec());
  ASSERT_FALSE(vm.ok());
  EXPECT_TRUE(absl::IsUnavailable(vm.status())) << vm.status();
  EXPECT_THAT(vm.status().message(), HasSubstr("exited with status 2"));
  EXPECT_THAT(vm.status().message(), HasSubstr("snapshot: bad magic"));
  EXPECT_THAT(vm.status().message(), HasSubstr("guest said goodbye"));
  EXPECT_THAT(vm.status().message(), ::testing::Not(HasSubstr("previous run")));
  EXPECT_EQ(testing::ReadFileToString(sandbox_ + "/vm/console.log.prev"),
            "the previous run's console\n");
  EXPECT_FALSE(IsSocket(sandbox_ + "/vm/vsock.sock"));
  EXPECT_FALSE(IsSocket(sandbox_ + "/vm/control.sock"));
  EXPECT_TRUE(NoChildren());
}

TEST_F(VmProcessTest, AnAgentThatNeverAnswersTimesOutAndTheVmmIsKilled) {
  const std::string vmm = FakeVmm("exec sleep 60");
  absl::StatusOr<std::unique_ptr<Vm>> vm = Backend(vmm)->Start(Spec());
  ASSERT_FALSE(vm.ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(vm.status())) << vm.status();
  EXPECT_THAT(vm.status().message(), HasSubstr("did not answer within 400 ms"));
  EXPECT_TRUE(NoChildren());
}

// A stand-in sbx-vmm whose "guest agent" answers on the vsock socket
// (the muxer's CONNECT handshake, then one frame per connection): Ping,
// AfterRestore, and AttachDisk with `attach_reply` (hex of a serialized
// Response). It appends each request's first byte(s) and the device of an
// AttachDisk to `log`.
std::string FakeAgentVmm(const std::string& bin, const std::string& log,
                         const std::string& attach_reply_hex, bool hang_on_other = false) {
  const std::string script = bin + "/fake_agent.py";
  WriteFile(script, absl::StrCat(R"(import socket, struct, sys
args = sys.argv[1:]
path = args[args.index("--vsock") + 1]
log = open(")", log, R"(", "a", buffering=1)
attach_reply = bytes.fromhex(")", attach_reply_hex, R"(")
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(8)
def recv_exact(c, n):
    data = b""
    while len(data) < n:
        more = c.recv(n - len(data))
        if not more:
            raise EOFError
        data += more
    return data
def reply(c, payload):
    c.sendall(struct.pack("<I", len(payload)) + payload)
while True:
    c, _ = s.accept()
    try:
        line = b""
        while not line.endswith(b"\n"):
            line += recv_exact(c, 1)
        c.sendall(b"OK 1\n")
        n = struct.unpack("<I", recv_exact(c, 4))[0]
        req = recv_exact(c, n)
        if req[:1] == b"\x0a":          # ping
            log.write("ping\n"); reply(c, b"\x12\x00")
        elif req[:1] == b"\x72":        # after_restore
            log.write("after_restore\n"); reply(c, b"\x52\x00")
        elif req[:2] == b"\x82\x01":    # attach_disk { device }
            log.write("attach_disk " + req[5:].decode() + "\n"); reply(c, attach_reply)
        else:
            log.write("other\n")
            while )", hang_on_other ? "True" : "False", R"(:
                import time; time.sleep(1)
    except EOFError:
        pass
    c.close()
)"));
  return script;
}

std::string Hex(const std::string& bytes) {
  std::string out;
  for (unsigned char c : bytes) absl::StrAppend(&out, absl::Hex(c, absl::kZeroPad2));
  return out;
}

// A hostile VMM (issue 7: a guest may own its VMM) puts symlinks where
// sandboxd looks: its vsock socket's name points at another agent's
// socket, its console at a host file. sandboxd follows neither.
TEST_F(VmProcessTest, SymlinksAVmmPlantsRedirectNothing) {
  const std::string log = root_ + "/agent.log";
  const std::string elsewhere = root_ + "/elsewhere.sock";
  const std::string script = FakeAgentVmm(bin_, log, "5200");
  const std::string secret = root_ + "/host-secret";
  WriteFile(secret, "the host's secret\n");
  const std::string vmm = FakeVmm(absl::StrCat(
      "for a; do last=$a; done\n"  // --console FILE comes last
      "ln -s ", secret, " \"$last\"\n",
      "python3 ", script, " --vsock ", elsewhere, " &\n",
      "while [ ! -S ", elsewhere, " ]; do sleep 0.05; done\n",
      "ln -s ", elsewhere, " ", sandbox_, "/vm/vsock.sock\n",
      "sleep 0.3\n"
      "exit 2"));
  absl::StatusOr<std::unique_ptr<Vm>> vm = Backend(vmm)->Start(Spec());
  ASSERT_FALSE(vm.ok());
  EXPECT_THAT(vm.status().message(), ::testing::Not(HasSubstr("the host's secret")));
  // The agent behind the symlink never heard a ping.
  EXPECT_EQ(testing::ReadFileToString(log), "");
  ::system(absl::StrCat("pkill -f ", script).c_str());

  // A FIFO for a console: reading the tail does not block.
  const std::string fifo_vmm = FakeVmm(
      "for a; do last=$a; done\n"
      "mkfifo \"$last\"\n"
      "exit 2");
  vm = Backend(fifo_vmm)->Start(Spec());
  ASSERT_FALSE(vm.ok());
  EXPECT_THAT(vm.status().message(), HasSubstr("exited with status 2"));
  EXPECT_TRUE(NoChildren());
}

TEST_F(VmProcessTest, StartAttachesTheDiskAfterTheRestore) {
  const std::string log = root_ + "/agent.log";
  const std::string script = FakeAgentVmm(bin_, log, "5200");  // Done
  const std::string vmm = FakeVmm(absl::StrCat("exec python3 ", script, " \"$@\""));
  VmSpec spec = Spec();
  spec.ready_timeout_ms = 10'000;
  spec.attach_device = "/dev/vdb";
  absl::StatusOr<std::unique_ptr<Vm>> vm = Backend(vmm)->Start(spec);
  ASSERT_TRUE(vm.ok()) << vm.status();
  (*vm)->Kill();
  EXPECT_EQ(testing::ReadFileToString(log), "ping\nafter_restore\nattach_disk /dev/vdb\n");
  // A wake (no attach_device) does not attach.
  ASSERT_EQ(::unlink(log.c_str()), 0);
  spec.attach_device.clear();
  vm = Backend(vmm)->Start(spec);
  ASSERT_TRUE(vm.ok()) << vm.status();
  (*vm)->Kill();
  EXPECT_EQ(testing::ReadFileToString(log), "ping\nafter_restore\n");
  EXPECT_TRUE(NoChildren());
}

TEST_F(VmProcessTest, ASleepThatHangsIsEndedByKillingTheVmm) {
  const std::string log = root_ + "/agent.log";
  // The agent never answers Sync (a wedged guest).
  const std::string script = FakeAgentVmm(bin_, log, "5200", /*hang_on_other=*/true);
  VmmBackendOptions options;
  options.vmm_binary = FakeVmm(absl::StrCat("exec python3 ", script, " \"$@\""));
  options.sleep_timeout_ms = 500;
  VmSpec spec = Spec();
  spec.ready_timeout_ms = 10'000;
  absl::StatusOr<std::unique_ptr<Vm>> vm = NewVmmBackend(options)->Start(spec);
  ASSERT_TRUE(vm.ok()) << vm.status();
  const auto start = std::chrono::steady_clock::now();
  absl::Status slept = (*vm)->Sleep(root_ + "/sleep-snapshot");
  EXPECT_FALSE(slept.ok());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
  std::string why;
  EXPECT_FALSE((*vm)->Alive(&why)) << "the hung VMM must be gone";
  EXPECT_FALSE(fs::exists(root_ + "/sleep-snapshot"));
  EXPECT_TRUE(NoChildren());
}

TEST_F(VmProcessTest, AFailedAttachFailsStartAndLeavesNothingRunning) {
  const std::string log = root_ + "/agent.log";
  // Response { error: Error { code: 15 (DATA_LOSS), message } }.
  const std::string message = "e2fsck -p found errors it cannot fix";
  const std::string error =
      absl::StrCat(std::string("\x08\x0f\x12", 3),
                   std::string(1, static_cast<char>(message.size())), message);
  const std::string response =
      absl::StrCat("\x0a", std::string(1, static_cast<char>(error.size())), error);
  const std::string vmm = FakeVmm(
      absl::StrCat("exec python3 ", FakeAgentVmm(bin_, log, Hex(response)), " \"$@\""));
  VmSpec spec = Spec();
  spec.ready_timeout_ms = 10'000;
  spec.attach_device = "/dev/vdc";
  absl::StatusOr<std::unique_ptr<Vm>> vm = Backend(vmm)->Start(spec);
  ASSERT_FALSE(vm.ok());
  EXPECT_TRUE(absl::IsDataLoss(vm.status())) << vm.status();
  EXPECT_THAT(vm.status().message(), HasSubstr(message));
  EXPECT_THAT(vm.status().message(), HasSubstr("AttachDisk /dev/vdc"));
  EXPECT_EQ(testing::ReadFileToString(log), "ping\nafter_restore\nattach_disk /dev/vdc\n");
  EXPECT_TRUE(NoChildren());
}

TEST_F(VmProcessTest, TheVmmRunsInItsCgroupFromItsFirstInstruction) {
  UseCgroups();
  if (IsSkipped() || HasFatalFailure()) return;
  VmSpec spec = Spec();
  spec.cgroup_name = "vm-a";
  spec.limits.pids_max = 64;
  // A leftover group of an earlier run is replaced.
  {
    absl::StatusOr<std::unique_ptr<Cgroup>> left =
        Cgroup::Create(*cgroups_, spec.cgroup_name, {});
    ASSERT_TRUE(left.ok()) << left.status();
    (*left)->Release();
  }
  const std::string vmm =
      FakeVmm("cat /proc/self/cgroup > \"$(dirname \"$0\")/cgroup\"\nexec sleep 60");
  absl::StatusOr<std::unique_ptr<Vm>> vm = Backend(vmm)->Start(spec);
  ASSERT_FALSE(vm.ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(vm.status())) << vm.status();
  EXPECT_THAT(testing::ReadFileToString(bin_ + "/cgroup"),
              HasSubstr(absl::StrCat("sbx-vmtest-", ::getpid(), "/vm-a")));
  for (const std::string& parent : cgroups_->parent_dirs()) {
    EXPECT_FALSE(fs::exists(parent + "/vm-a")) << parent;
  }
  EXPECT_TRUE(NoChildren());
}

TEST_F(VmProcessTest, AdoptRefusesWhatIsNotThisSandboxsVmm) {
  auto backend = Backend(FakeVmm("exit 0"));
  // Not sbx-vmm at all.
  pid_t sleeper = ::fork();
  if (sleeper == 0) {
    ::execl("/bin/sleep", "sleep", "60", nullptr);
    ::_exit(127);
  }
  ASSERT_GT(sleeper, 0);
  ::usleep(100'000);  // past its exec
  absl::StatusOr<uint64_t> ticks = ProcessStartTicks(sleeper);
  ASSERT_TRUE(ticks.ok()) << ticks.status();
  absl::StatusOr<std::unique_ptr<Vm>> vm =
      backend->Adopt(Spec(), VmHandle{.pid = sleeper, .start_ticks = *ticks});
  EXPECT_TRUE(absl::IsNotFound(vm.status())) << vm.status();
  EXPECT_THAT(vm.status().message(), HasSubstr("not sbx-vmm"));
  // A recycled pid: the start time differs.
  vm = backend->Adopt(Spec(), VmHandle{.pid = sleeper, .start_ticks = *ticks + 1});
  EXPECT_TRUE(absl::IsNotFound(vm.status())) << vm.status();
  EXPECT_THAT(vm.status().message(), HasSubstr("another process"));
  ::kill(sleeper, SIGKILL);
  ASSERT_EQ(::waitpid(sleeper, nullptr, 0), sleeper);
  // Gone.
  vm = backend->Adopt(Spec(), VmHandle{.pid = sleeper, .start_ticks = *ticks});
  EXPECT_TRUE(absl::IsNotFound(vm.status())) << vm.status();
}

TEST_F(VmProcessTest, AdoptRefusesAnotherSandboxsVmmAndKillsAMuteOne) {
  // An "sbx-vmm" (a copy of the shell under that name) with this
  // sandbox's command line, whose agent never answers.
  const std::string vmm = bin_ + "/sbx-vmm";
  fs::copy_file("/bin/sh", vmm);
  pid_t pid = ::fork();
  if (pid == 0) {
    const std::string vsock = sandbox_ + "/vm/vsock.sock";
    ::execl(vmm.c_str(), "sbx-vmm", "-c", "while :; do sleep 0.1; done", "x", "--vsock",
            vsock.c_str(), nullptr);
    ::_exit(127);
  }
  ASSERT_GT(pid, 0);
  ::usleep(100'000);
  absl::StatusOr<uint64_t> ticks = ProcessStartTicks(pid);
  ASSERT_TRUE(ticks.ok()) << ticks.status();
  const VmHandle handle{.pid = pid, .start_ticks = *ticks};
  auto backend = Backend(vmm);
  VmSpec other = Spec();
  other.dir = tpl_;
  absl::StatusOr<std::unique_ptr<Vm>> vm = backend->Adopt(other, handle);
  EXPECT_TRUE(absl::IsNotFound(vm.status())) << vm.status();
  EXPECT_THAT(vm.status().message(), HasSubstr("not the one of"));
  // The right sandbox, but its agent is silent: unusable, so it is ended.
  vm = backend->Adopt(Spec(), handle);
  EXPECT_TRUE(absl::IsUnavailable(vm.status())) << vm.status();
  EXPECT_THAT(vm.status().message(), HasSubstr("does not answer"));
  EXPECT_TRUE(NoChildren());
}

TEST_F(VmProcessTest, BuildTemplateRenamesACompleteBuildIntoPlace) {
  // Stands in for --snapshot-when-ready: writes DIR/vmstate, takes a while.
  const std::string vmm = FakeVmm(
      "while [ $# -gt 0 ]; do\n"
      "  case $1 in --snapshot-when-ready) dir=$2; shift;; esac; shift\n"
      "done\n"
      "sleep 0.5; mkdir -p \"$dir\" && echo state > \"$dir/vmstate\" && sleep 0.5");
  TemplateSpec spec;
  spec.dir = root_ + "/templates/t1";
  spec.kernel = root_ + "/rootfs.ext4";  // any file
  spec.rootfs = root_ + "/rootfs.ext4";
  spec.memory_mib = 256;
  spec.disk_mib = 64;
  std::vector<std::string> lines;
  absl::StatusOr<TemplateBuild> build = Backend(vmm)->BuildTemplate(
      spec, [&](const std::string& line) { lines.push_back(line); });
  ASSERT_TRUE(build.ok()) << build.status();
  EXPECT_EQ(build->snapshot_dir, spec.dir + "/snapshot");
  EXPECT_EQ(build->disk, spec.dir + "/disk.img");
  EXPECT_GT(build->seconds, 0.5);
  EXPECT_EQ(testing::ReadFileToString(build->snapshot_dir + "/vmstate"), "state\n");
  EXPECT_EQ(fs::file_size(build->disk), uint64_t{64} << 20);
  EXPECT_EQ(build->disk_slot_bytes, uint64_t{64} << 20);
  ASSERT_FALSE(lines.empty());
  EXPECT_THAT(lines.front(), HasSubstr("booting"));
  EXPECT_THAT(lines.back(), HasSubstr("template ready"));
  // Nothing beside it.
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(root_ + "/templates")) {
    names.push_back(e.path().filename().string());
  }
  EXPECT_THAT(names, ElementsAre("t1"));
  // A second build into the same place is refused before it starts.
  EXPECT_TRUE(absl::IsAlreadyExists(Backend(vmm)->BuildTemplate(spec, nullptr).status()));
  EXPECT_TRUE(NoChildren());
}

TEST_F(VmProcessTest, AFailedTemplateBuildLeavesNothing) {
  const std::string vmm = FakeVmm(
      "echo 'sbx-vmm: --snapshot-when-ready: the agent did not answer on vsock port 1024' >&2\n"
      "exit 6");
  TemplateSpec spec;
  spec.dir = root_ + "/templates/t2";
  spec.kernel = root_ + "/rootfs.ext4";
  spec.rootfs = root_ + "/rootfs.ext4";
  absl::StatusOr<TemplateBuild> build = Backend(vmm)->BuildTemplate(spec, nullptr);
  ASSERT_FALSE(build.ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(build.status())) << build.status();
  EXPECT_THAT(build.status().message(), HasSubstr("exited with status 6"));
  EXPECT_THAT(build.status().message(), HasSubstr("did not answer on vsock port 1024"));
  EXPECT_TRUE(fs::is_empty(root_ + "/templates"));
  EXPECT_TRUE(NoChildren());
}

}  // namespace
}  // namespace sbx::sandboxd
