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
                          "/s/sb1/vsock.sock", "--control", "/s/sb1/control.sock",
                          "--console", "/s/sb1/console.log"));
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
                  "--cmdline", "sbx.upper=/dev/vdb", "--console", "/t/tmp/console.log",
                  "--vsock", "/t/tmp/vsock.sock", "--snapshot-when-ready",
                  "/t/tmp/snapshot", "--ready-timeout", "91", "--record-working-set",
                  "2000"));
  std::vector<std::string> no_ws = TemplateArgv("/bin/sbx-vmm", spec, "/t/tmp", 0);
  EXPECT_EQ(no_ws.back(), "91");
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
  EXPECT_TRUE(NoChildren());
}

TEST_F(VmProcessTest, AVmmThatFailsIsReportedWithItsStderrAndConsole) {
  MakeStaleSocket(sandbox_ + "/vsock.sock");
  MakeStaleSocket(sandbox_ + "/control.sock");
  WriteFile(sandbox_ + "/console.log", "the previous run's console\n");
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
  EXPECT_EQ(testing::ReadFileToString(sandbox_ + "/console.log.prev"),
            "the previous run's console\n");
  EXPECT_FALSE(IsSocket(sandbox_ + "/vsock.sock"));
  EXPECT_FALSE(IsSocket(sandbox_ + "/control.sock"));
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
    const std::string vsock = sandbox_ + "/vsock.sock";
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
