#include "sandboxd/jail/jail.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "base/test_facility.h"
#include "base/unique_fd.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sbx::sandboxd {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;

constexpr uid_t kUid = 64123;
constexpr gid_t kGid = 64124;
constexpr std::chrono::milliseconds kTimeout{10'000};

testing::FacilityCheck CheckRoot() {
  testing::FacilityCheck check;
  check.available = ::geteuid() == 0;
  if (!check.available) {
    check.reason = "the jail needs root (namespaces, mounts, the uid switch): run as root";
  }
  return check;
}

// Nothing forked by the jail is left behind: the test process has no child.
bool NoChildren() { return ::waitpid(-1, nullptr, WNOHANG) == -1 && errno == ECHILD; }

struct Outcome {
  ProcessExit exit;
  std::string out;  // the probe's stdout
};

class JailTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SBX_REQUIRE(CheckRoot());
    root_ = MakeDir("root");
    host_ = MakeDir("host");
  }

  void TearDown() override {
    for (const std::string& d : dirs_) {
      std::error_code ec;
      std::filesystem::remove_all(d, ec);
    }
  }

  // A fresh root-owned directory.
  std::string MakeDir(const char* what) {
    std::string templ = std::string("/tmp/sbx-jail-") + what + "-XXXXXX";
    char* made = ::mkdtemp(templ.data());
    EXPECT_NE(made, nullptr) << strerror(errno);
    EXPECT_EQ(::chmod(templ.c_str(), 0755), 0);  // the jail's uid must reach its "/"
    dirs_.push_back(templ);
    return templ;
  }

  // The spec every test starts from: the probe at /jail_probe.
  JailSpec Spec(std::vector<std::string> probe_args) const {
    JailSpec spec;
    spec.root_dir = root_;
    spec.binds.push_back({SBX_JAIL_PROBE, "/jail_probe", /*writable=*/false, /*exec=*/true});
    spec.uid = kUid;
    spec.gid = kGid;
    spec.argv = {"/jail_probe"};
    spec.argv.insert(spec.argv.end(), probe_args.begin(), probe_args.end());
    return spec;
  }

  // Runs the probe of `spec` to its end; its stdout goes to a host file.
  Outcome Run(JailSpec spec) {
    const std::string out_path = host_ + "/probe.out." + std::to_string(runs_++);
    UniqueFd out(::open(out_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    EXPECT_TRUE(out.valid());
    spec.stdout_fd = out.get();
    absl::StatusOr<JailedProcess> p = SpawnJailed(spec);
    Outcome outcome;
    outcome.exit.value = -1;
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return outcome;
    absl::StatusOr<ProcessExit> exit = p->WaitFor(kTimeout);
    if (!exit.ok()) {
      ADD_FAILURE() << exit.status();
      (void)p->Kill(SIGKILL);
      exit = p->Wait();
    }
    if (exit.ok()) outcome.exit = *exit;
    outcome.out = testing::ReadFileToString(out_path);
    return outcome;
  }

  std::string root_, host_;
  std::vector<std::string> dirs_;
  int runs_ = 0;
};

TEST_F(JailTest, HostFilesOutsideTheJailAreNotThere) {
  Outcome o = Run(Spec({"open", "/etc/passwd"}));
  EXPECT_TRUE(o.exit.exited_with(1)) << o.exit.ToString();
  EXPECT_EQ(o.out, "errno=ENOENT\n");
}

TEST_F(JailTest, ABoundFileIsReadableAndReadOnly) {
  const std::string file = host_ + "/kernel";
  { UniqueFd f(::open(file.c_str(), O_WRONLY | O_CREAT, 0644)); }
  JailSpec spec = Spec({"open", "/kernel"});
  spec.binds.push_back({file, "/kernel", /*writable=*/false});
  Outcome o = Run(spec);
  EXPECT_TRUE(o.exit.exited_with(0)) << o.exit.ToString() << " " << o.out;

  spec.argv = {"/jail_probe", "open", "/kernel", "rw"};
  ASSERT_EQ(::chown(file.c_str(), kUid, kGid), 0);  // permissions allow it: the mount does not
  o = Run(spec);
  EXPECT_TRUE(o.exit.exited_with(1)) << o.exit.ToString();
  EXPECT_EQ(o.out, "errno=EROFS\n");
}

TEST_F(JailTest, AWritableDirectoryIsSharedWithTheHost) {
  const std::string dir = host_ + "/sandbox";
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  ASSERT_EQ(::chown(dir.c_str(), kUid, kGid), 0);
  { UniqueFd f(::open((dir + "/console.log").c_str(), O_WRONLY | O_CREAT, 0600)); }
  ASSERT_EQ(::chown((dir + "/console.log").c_str(), kUid, kGid), 0);
  JailSpec spec = Spec({"open", "/sandbox/console.log", "rw"});
  spec.binds.push_back({dir, "/sandbox", /*writable=*/true});
  Outcome o = Run(spec);
  EXPECT_TRUE(o.exit.exited_with(0)) << o.exit.ToString() << " " << o.out;
  EXPECT_EQ(testing::ReadFileToString(dir + "/console.log"), "jail\n");
}

TEST_F(JailTest, ListedDevicesWorkAndOthersDoNot) {
  JailSpec spec = Spec({"open", "/dev/null", "rw"});
  spec.devices = {"/dev/null"};
  Outcome o = Run(spec);
  EXPECT_TRUE(o.exit.exited_with(0)) << o.exit.ToString() << " " << o.out;
  // Made afresh in the jail's own /dev: the jail's ids own it, mode 0600
  // (so a host node only root may open still works inside).
  spec.argv = {"/jail_probe", "stat", "/dev/null"};
  o = Run(spec);
  EXPECT_EQ(o.out, absl::StrCat("uid=", kUid, " gid=", kGid, " mode=20600\n"));
  // Nothing else is in that /dev, and nothing can be added to it.
  spec.argv = {"/jail_probe", "open", "/dev/zero", "rw"};
  o = Run(spec);
  EXPECT_EQ(o.out, "errno=ENOENT\n");
  spec.argv = {"/jail_probe", "stat", "/dev/kvm"};
  o = Run(spec);
  EXPECT_EQ(o.out, "errno=ENOENT\n");

  // A device node planted in the root directory: the root is nodev.
  ASSERT_EQ(::mknod((root_ + "/planted-null").c_str(), S_IFCHR | 0666, makedev(1, 3)), 0);
  spec.argv = {"/jail_probe", "open", "/planted-null", "rw"};
  o = Run(spec);
  EXPECT_TRUE(o.exit.exited_with(1)) << o.exit.ToString();
  EXPECT_EQ(o.out, "errno=EACCES\n");
}

TEST_F(JailTest, TheHostNetworkIsUnreachable) {
  UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(listener.valid());
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(listener.get(), 4), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string port = std::to_string(ntohs(addr.sin_port));

  Outcome o = Run(Spec({"socket-inet", port}));
  EXPECT_TRUE(o.exit.exited_with(1)) << o.exit.ToString();
  EXPECT_THAT(o.out, AnyOf("errno=ENETUNREACH\n", "errno=ECONNREFUSED\n"));

  // The control: without a network namespace the same probe gets through,
  // so the failure above is the namespace's doing.
  JailSpec spec = Spec({"socket-inet", port});
  spec.new_net = false;
  o = Run(spec);
  EXPECT_TRUE(o.exit.exited_with(0)) << o.exit.ToString() << " " << o.out;
}

TEST_F(JailTest, AnotherSandboxsProcessCannotBeSignalledOrTraced) {
  // "Another sandbox's VMM": a second jailed process, in its own root.
  JailSpec other = Spec({"sleep"});
  other.root_dir = MakeDir("other");
  absl::StatusOr<JailedProcess> neighbour = SpawnJailed(other);
  ASSERT_TRUE(neighbour.ok()) << neighbour.status();
  const std::string victim = std::to_string(neighbour->pid());
  const std::string host = std::to_string(::getpid());

  for (const std::string& pid : {victim, host}) {
    Outcome o = Run(Spec({"kill", pid}));
    EXPECT_TRUE(o.exit.exited_with(1)) << "kill " << pid << ": " << o.exit.ToString();
    EXPECT_EQ(o.out, "errno=ESRCH\n") << "kill " << pid;
    o = Run(Spec({"ptrace", pid}));
    EXPECT_TRUE(o.exit.exited_with(1)) << "ptrace " << pid << ": " << o.exit.ToString();
    EXPECT_THAT(o.out, AnyOf("errno=ESRCH\n", "errno=EPERM\n")) << "ptrace " << pid;
  }
  // The neighbour still runs.
  EXPECT_EQ(neighbour->WaitFor(std::chrono::milliseconds(0)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE(neighbour->Kill(SIGKILL).ok());
  absl::StatusOr<ProcessExit> exit = neighbour->Wait();
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_TRUE(exit->killed_by(SIGKILL)) << exit->ToString();
}

TEST_F(JailTest, RunsAsTheSpecsUnprivilegedIdsWithoutGroups) {
  Outcome o = Run(Spec({"id"}));
  EXPECT_TRUE(o.exit.exited_with(0)) << o.exit.ToString();
  EXPECT_EQ(o.out, "uid=64123,64123,64123 gid=64124,64124,64124 groups=0\n");
}

TEST_F(JailTest, HoldsNoCapabilities) {
  Outcome o = Run(Spec({"caps"}));
  EXPECT_TRUE(o.exit.exited_with(0)) << o.exit.ToString();
  EXPECT_EQ(o.out, "eff=000000000 prm=000000000 inh=000000000 bnd=0 amb=0\n");
}

TEST_F(JailTest, HasNoNewPrivs) {
  Outcome o = Run(Spec({"nnp"}));
  EXPECT_TRUE(o.exit.exited_with(0)) << o.exit.ToString();
  EXPECT_EQ(o.out, "nnp=1\n");
}

TEST_F(JailTest, RlimitsApply) {
  JailSpec spec = Spec({"rlimit"});
  spec.max_open_files = 64;
  spec.max_file_size = 1 << 20;
  spec.max_processes = 16;
  Outcome o = Run(spec);
  EXPECT_TRUE(o.exit.exited_with(0)) << o.exit.ToString();
  EXPECT_EQ(o.out, "nofile=64,64 fsize=1048576,1048576 nproc=16,16\n");
}

TEST_F(JailTest, IsPid1WhichIgnoresSigtermButNotSigkill) {
  Outcome o = Run(Spec({"pid"}));
  EXPECT_EQ(o.out, "pid=1\n");

  absl::StatusOr<JailedProcess> p = SpawnJailed(Spec({"sleep"}));
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_TRUE(p->Kill(SIGTERM).ok());
  EXPECT_EQ(p->WaitFor(std::chrono::milliseconds(300)).status().code(),
            absl::StatusCode::kDeadlineExceeded)
      << "PID 1 without a SIGTERM handler must ignore SIGTERM";
  ASSERT_TRUE(p->Kill(SIGKILL).ok());
  absl::StatusOr<ProcessExit> exit = p->WaitFor(kTimeout);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_TRUE(exit->killed_by(SIGKILL)) << exit->ToString();
}

TEST_F(JailTest, ProcWhenAskedShowsOnlyTheJail) {
  JailSpec spec = Spec({"open", "/proc/1/status"});
  spec.mount_proc = true;
  Outcome o = Run(spec);
  EXPECT_TRUE(o.exit.exited_with(0)) << o.exit.ToString() << " " << o.out;
  spec.argv = {"/jail_probe", "open", "/proc/" + std::to_string(::getpid()) + "/status"};
  o = Run(spec);
  EXPECT_EQ(o.out, "errno=ENOENT\n");
}

TEST_F(JailTest, TheHostSeesNoneOfTheJailsMounts) {
  Outcome o = Run(Spec({"id"}));
  ASSERT_TRUE(o.exit.exited_with(0)) << o.exit.ToString();
  struct stat st;
  ASSERT_EQ(::stat((root_ + "/jail_probe").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 0) << "the probe's mount point is an empty file on the host";
}

TEST_F(JailTest, AMissingRootDirIsNamed) {
  JailSpec spec = Spec({"id"});
  spec.root_dir = root_ + "/missing";
  absl::StatusOr<JailedProcess> p = SpawnJailed(spec);
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(p.status().message(), HasSubstr("root_dir"));
  EXPECT_THAT(p.status().message(), HasSubstr(spec.root_dir));
  EXPECT_TRUE(NoChildren());
}

TEST_F(JailTest, AMissingBindSourceIsNamed) {
  JailSpec spec = Spec({"id"});
  spec.binds.push_back({host_ + "/no-such-disk.img", "/disk.img", true});
  absl::StatusOr<JailedProcess> p = SpawnJailed(spec);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kNotFound) << p.status();
  EXPECT_THAT(p.status().message(), HasSubstr(host_ + "/no-such-disk.img"));
  EXPECT_TRUE(NoChildren());
}

TEST_F(JailTest, AFailureInsideTheChildNamesTheStepAndLeavesNothingRunning) {
  JailSpec spec = Spec({"id"});
  spec.argv[0] = "/not-in-the-jail";
  absl::StatusOr<JailedProcess> p = SpawnJailed(spec);
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(p.status().message(), HasSubstr("execve /not-in-the-jail"));
  EXPECT_THAT(p.status().message(), HasSubstr("No such file")) << p.status();
  EXPECT_TRUE(NoChildren());
}

TEST_F(JailTest, BeforeSetupRunsWhileTheChildWaits) {
  JailSpec spec = Spec({"id"});
  pid_t seen = 0;
  std::string status_then;
  spec.before_setup = [&](pid_t pid) {
    seen = pid;
    // The child has not exec'd yet: it is still this test binary, as root.
    status_then = testing::ReadFileToString("/proc/" + std::to_string(pid) + "/status");
    return absl::OkStatus();
  };
  Outcome o = Run(spec);
  EXPECT_GT(seen, 0);
  EXPECT_THAT(status_then, HasSubstr("Uid:\t0\t0\t0\t0"));
  EXPECT_EQ(o.out, "uid=64123,64123,64123 gid=64124,64124,64124 groups=0\n");

  spec.before_setup = [](pid_t) { return absl::UnavailableError("no cgroup for you"); };
  absl::StatusOr<JailedProcess> p = SpawnJailed(spec);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(p.status().message()), HasSubstr("no cgroup for you"));
  EXPECT_TRUE(NoChildren());
}

TEST_F(JailTest, BadSpecsAreRefused) {
  JailSpec spec = Spec({"id"});
  spec.uid = 0;
  EXPECT_EQ(SpawnJailed(spec).status().code(), absl::StatusCode::kInvalidArgument);

  spec = Spec({"id"});
  spec.binds.push_back({host_, "/a/../etc", true});
  EXPECT_THAT(SpawnJailed(spec).status().message(), HasSubstr("normalized"));

  spec = Spec({"id"});
  spec.binds.push_back({host_, "/sandbox", true});
  spec.binds.push_back({SBX_JAIL_PROBE, "/sandbox/probe", false});
  EXPECT_THAT(SpawnJailed(spec).status().message(), HasSubstr("nested"));

  spec = Spec({"id"});
  spec.root_dir = MakeDir("closed");
  ASSERT_EQ(::chmod(spec.root_dir.c_str(), 0700), 0);
  EXPECT_THAT(std::string(SpawnJailed(spec).status().message()),
              HasSubstr("is not searchable by others (mode 0700)"));

  spec = Spec({"id"});
  spec.devices = {SBX_JAIL_PROBE};
  EXPECT_THAT(SpawnJailed(spec).status().message(), HasSubstr("is not /dev/NAME"));
  spec.devices = {"/dev/shm"};  // a directory
  EXPECT_THAT(SpawnJailed(spec).status().message(), HasSubstr("not a device node"));
  spec.devices = {"/dev/null", "/dev/null"};
  EXPECT_THAT(SpawnJailed(spec).status().message(), HasSubstr("listed twice"));
  spec.devices = {"/dev/null"};
  spec.binds.push_back({SBX_JAIL_PROBE, "/dev/probe", false});
  EXPECT_THAT(SpawnJailed(spec).status().message(), HasSubstr("nested"));
  EXPECT_TRUE(NoChildren());
}

}  // namespace
}  // namespace sbx::sandboxd
