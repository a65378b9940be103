// End to end: sandboxd's VmBackend with real sbx-vmm processes, the Linux
// kernel and the Debian rootfs. One template build (the only Linux boot,
// with sbx.upper=late: the template never mounts a writable disk), then
// restores: a sandbox gets its own disk (MakeSandboxDisk: a 64 MiB ext4 in
// the template's 64 GiB slot) attached after the restore, runs a command,
// writes a file, sees its quota in df and ENOSPC beyond it, and starts a
// background counter; it sleeps (diff snapshot, the VMM exits) and wakes
// (without attaching: its snapshot has the disk mounted) with the file and
// the counter still counting; it sleeps and wakes once more (the snapshot
// is replaced); a second backend adopts the running VM by its handle and
// runs a command; Kill ends it, as a VMM crash would; the template's
// snapshot restored again with the same disk attached has the files back.
// Needs /dev/kvm and the built images (label e2e); as root, the VMs run in
// cgroups and jailed (sandboxd's default), and the test shows what a
// compromised VMM gets from its jail: code run with its ids in its
// namespaces and root cannot open a host file, reach the network, signal
// or ptrace a neighbour VMM or sandboxd; a forbidden system call (the
// hidden test hook) kills a jailed VMM with SIGSYS.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <cstring>
#include <grp.h>
#include <sys/stat.h>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/test_facility.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "guest/client.h"
#include "sandboxd/vm_process.h"

namespace sbx::sandboxd {
namespace {

using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

// The sbx-vmm binary of this build: vmm/sbx-vmm beside tests/.
std::string VmmBinary() {
  return (fs::read_symlink("/proc/self/exe").parent_path().parent_path() / "vmm" /
          "sbx-vmm")
      .string();
}

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The counter the guest's background loop writes (0: none yet).
uint64_t ReadCounter(agent::Client& agent) {
  absl::StatusOr<std::string> text = agent.ReadFileToString("/tmp/counter");
  uint64_t n = 0;
  if (!text.ok() || !absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &n)) return 0;
  return n;
}

// Waits until the counter passes `above`; its value (0: it did not).
uint64_t WaitForCounterAbove(agent::Client& agent, uint64_t above) {
  const Clock::time_point start = Clock::now();
  while (SecondsSince(start) < 180) {
    uint64_t n = ReadCounter(agent);
    if (n > above) return n;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  return 0;
}

// The value of `key` ("Uid:", "CapEff:"...) in /proc/PID/status.
std::string StatusField(pid_t pid, const std::string& key) {
  const std::vector<std::string> lines =
      absl::StrSplit(testing::ReadFileToString(absl::StrCat("/proc/", pid, "/status")), '\n');
  for (const std::string& line : lines) {
    if (line.starts_with(key)) {
      return std::string(absl::StripAsciiWhitespace(line.substr(key.size())));
    }
  }
  return "";
}

std::string Namespace(const std::string& pid, const char* ns) {
  std::error_code ec;
  return fs::read_symlink(absl::StrCat("/proc/", pid, "/ns/", ns), ec).string();
}

// Runs jail_probe ARGS as a compromised VMM `vmm` would: in its mount,
// pid, network, ipc and uts namespaces, under its root, with its uid and
// gid, no groups, no capabilities, no_new_privs. What the probe printed.
std::string ProbeInJailOf(pid_t vmm, uid_t uid, const std::vector<std::string>& args) {
  int out[2];
  if (::pipe(out) != 0) return "pipe failed";
  const pid_t child = ::fork();
  if (child == 0) {
    ::dup2(out[1], 1);
    ::dup2(out[1], 2);
    const int probe = ::open(SBX_JAIL_PROBE, O_PATH | O_CLOEXEC);
    const std::string proc = absl::StrCat("/proc/", vmm);
    const int root = ::open((proc + "/root").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    std::vector<int> ns;
    for (const char* name : {"ipc", "uts", "net", "pid", "mnt"}) {
      ns.push_back(::open((proc + "/ns/" + name).c_str(), O_RDONLY | O_CLOEXEC));
    }
    for (int fd : ns) {
      if (fd < 0 || ::setns(fd, 0) != 0) {
        std::printf("setns failed: %s\n", strerror(errno));
        ::_exit(120);
      }
    }
    if (probe < 0 || root < 0 || ::fchdir(root) != 0 || ::chroot(".") != 0 ||
        ::chdir("/") != 0 || ::setgroups(0, nullptr) != 0 ||
        ::syscall(SYS_setresgid, uid, uid, uid) != 0 ||
        ::syscall(SYS_setresuid, uid, uid, uid) != 0 ||
        ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
      std::printf("entering the jail failed: %s\n", strerror(errno));
      ::_exit(121);
    }
    // Into the pid namespace: a child.
    const pid_t inner = ::fork();
    if (inner == 0) {
      std::vector<char*> argv = {const_cast<char*>("jail_probe")};
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      char* envp[] = {nullptr};
      ::syscall(SYS_execveat, probe, "", argv.data(), envp, AT_EMPTY_PATH);
      std::printf("execveat failed: %s\n", strerror(errno));
      ::_exit(122);
    }
    int status = 0;
    ::waitpid(inner, &status, 0);
    ::_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 123);
  }
  ::close(out[1]);
  std::string text;
  char buf[512];
  ssize_t n;
  while ((n = ::read(out[0], buf, sizeof(buf))) > 0) text.append(buf, static_cast<size_t>(n));
  ::close(out[0]);
  ::waitpid(child, nullptr, 0);
  return text;
}

bool InCgroup(pid_t pid, const std::string& name) {
  return testing::ReadFileToString(absl::StrCat("/proc/", pid, "/cgroup")).find("/" + name) !=
         std::string::npos;
}

TEST(VmProcessE2eTest, TemplateStartSleepWakeAdoptKill) {
  SBX_REQUIRE(testing::CheckKvm());
  SBX_REQUIRE(testing::CheckImage("kernel/current/vmlinux"));
  SBX_REQUIRE(testing::CheckImage("rootfs/current/rootfs.ext4"));
  ASSERT_TRUE(fs::exists(VmmBinary())) << VmmBinary();
  std::string pattern = ::testing::TempDir() + "vmp_XXXXXX";
  ASSERT_NE(mkdtemp(pattern.data()), nullptr);
  const std::string root = pattern;
  struct Cleanup {
    std::string dir;
    ~Cleanup() { fs::remove_all(dir); }
  } cleanup{root};

  VmmBackendOptions options;
  options.vmm_binary = VmmBinary();
  // As root (CI), sandboxd's default: every sbx-vmm jailed.
  const bool jailed = geteuid() == 0;
  if (jailed) {
    options.jail = VmmJailOptions{.first_uid = 810'000'000, .uid_count = 64};
  } else {
    std::printf("note: not root, so no jail\n");
  }
  if (geteuid() == 0) {
    absl::StatusOr<CgroupRoot> cgroups =
        CgroupRoot::Open("/sys/fs/cgroup", absl::StrCat("sbx-e2e-", getpid()));
    EXPECT_TRUE(cgroups.ok()) << cgroups.status();
    if (cgroups.ok()) options.cgroups = *cgroups;
  } else {
    std::printf("note: not root, so no cgroups\n");
  }
  struct CgroupParents {
    std::optional<CgroupRoot>* root;
    ~CgroupParents() {
      if (root->has_value()) {
        for (const std::string& d : (*root)->parent_dirs()) rmdir(d.c_str());
      }
    }
  } cgroup_parents{&options.cgroups};
  std::unique_ptr<VmBackend> backend = NewVmmBackend(options);

  // The template: the one boot of this test.
  TemplateSpec tpl;
  tpl.dir = root + "/templates/base";
  tpl.kernel = testing::ImageCacheDir() + "/kernel/current/vmlinux";
  tpl.rootfs = testing::ImageCacheDir() + "/rootfs/current/rootfs.ext4";
  tpl.memory_mib = 384;
  // disk_mib: the default slot (64 GiB, sparse).
  tpl.ready_timeout_ms = 900'000;
  const Clock::time_point build_start = Clock::now();
  std::vector<std::string> progress;
  absl::StatusOr<TemplateBuild> build =
      backend->BuildTemplate(tpl, [&](const std::string& line) {
        std::printf("[%6.1f s] template: %s\n", SecondsSince(build_start), line.c_str());
        std::fflush(stdout);
        progress.push_back(line);
      });
  ASSERT_TRUE(build.ok()) << build.status();
  EXPECT_TRUE(fs::exists(build->snapshot_dir + "/vmstate"));
  EXPECT_TRUE(fs::exists(build->snapshot_dir + "/workingset"));
  EXPECT_FALSE(fs::exists(tpl.dir + "/vm/vsock.sock"));
  EXPECT_FALSE(fs::exists(tpl.dir + "/jail"));
  {
    // A finished template is root's (its build ran as a jailed uid).
    struct stat st;
    ASSERT_EQ(::stat(build->snapshot_dir.c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, ::geteuid());
    ASSERT_EQ(::stat((build->snapshot_dir + "/vmstate").c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, ::geteuid());
    EXPECT_EQ(st.st_mode & 0777, 0644u);
  }
  ASSERT_GE(progress.size(), 2u);
  EXPECT_THAT(progress.front(), HasSubstr("booting"));
  EXPECT_THAT(progress.back(), HasSubstr("template ready"));

  EXPECT_EQ(build->disk_slot_bytes, uint64_t{64} << 30);

  // A sandbox: a disk of its own, 64 MiB of ext4 in the template's slot,
  // attached after the restore.
  const std::string sb = root + "/sandboxes/sb1";
  fs::create_directories(sb);
  absl::Status disk_made = MakeSandboxDisk(sb + "/disk.img", build->disk_slot_bytes, 64);
  ASSERT_TRUE(disk_made.ok()) << disk_made;
  VmSpec spec;
  spec.dir = sb;
  spec.snapshot_dir = build->snapshot_dir;
  spec.template_snapshot_dir = build->snapshot_dir;
  spec.disks = {tpl.rootfs, sb + "/disk.img"};
  spec.attach_device = "/dev/vdb";
  spec.cgroup_name = "e2e-sb1";
  spec.limits = {.cpu_millis = 0, .memory_bytes = uint64_t{1} << 30, .pids_max = 1024};
  spec.ready_timeout_ms = 300'000;

  Clock::time_point t = Clock::now();
  absl::StatusOr<std::unique_ptr<Vm>> vm = backend->Start(spec);
  ASSERT_TRUE(vm.ok()) << vm.status();
  const double start_s = SecondsSince(t);
  std::string why;
  EXPECT_TRUE((*vm)->Alive(&why));
  const VmHandle first = (*vm)->handle();
  EXPECT_GT(first.pid, 0);
  EXPECT_GT(first.start_ticks, 0u);
  if (options.cgroups.has_value()) {
    EXPECT_TRUE(InCgroup(first.pid, spec.cgroup_name));
  }

  if (jailed) {
    // The VMM as the kernel sees it: its own uid in the range, no
    // capabilities at all, no_new_privs, seccomp filtering, namespaces of
    // its own.
    const std::string self = std::to_string(::getpid());
    const std::string vmm = std::to_string(first.pid);
    uint32_t uid = 0;
    const std::vector<std::string> uids = absl::StrSplit(StatusField(first.pid, "Uid:"), '\t');
    ASSERT_TRUE(absl::SimpleAtoi(uids[0], &uid)) << StatusField(first.pid, "Uid:");
    EXPECT_GE(uid, 810'000'000u);
    EXPECT_LT(uid, 810'000'064u);
    EXPECT_EQ(StatusField(first.pid, "Uid:"), absl::StrCat(uid, "\t", uid, "\t", uid, "\t", uid));
    EXPECT_EQ(StatusField(first.pid, "Gid:"), absl::StrCat(uid, "\t", uid, "\t", uid, "\t", uid));
    EXPECT_EQ(StatusField(first.pid, "Groups:"), "");
    for (const char* caps : {"CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"}) {
      EXPECT_EQ(StatusField(first.pid, caps), "0000000000000000") << caps;
    }
    EXPECT_EQ(StatusField(first.pid, "NoNewPrivs:"), "1");
    EXPECT_EQ(StatusField(first.pid, "Seccomp:"), "2");
    for (const char* ns : {"mnt", "pid", "net", "ipc", "uts"}) {
      EXPECT_NE(Namespace(vmm, ns), Namespace(self, ns)) << ns;
    }
    // Its root holds its own files only: the VMM's directory, its disks,
    // the template's snapshot, the binary, /dev/kvm and /dev/null.
    EXPECT_FALSE(fs::exists(absl::StrCat("/proc/", vmm, "/root/etc/passwd")));
    EXPECT_TRUE(fs::exists(absl::StrCat("/proc/", vmm, "/root", sb, "/vm/control.sock")));
    EXPECT_FALSE(fs::exists(absl::StrCat("/proc/", vmm, "/root", sb, "/vmm.log")));

    // A neighbour: another sandbox's jailed VMM.
    const std::string sb2 = root + "/sandboxes/sb2";
    fs::create_directories(sb2);
    ASSERT_TRUE(MakeSandboxDisk(sb2 + "/disk.img", build->disk_slot_bytes, 32).ok());
    VmSpec spec2 = spec;
    spec2.dir = sb2;
    spec2.disks = {tpl.rootfs, sb2 + "/disk.img"};
    spec2.attach_device.clear();
    spec2.cgroup_name = "e2e-sb2";
    absl::StatusOr<std::unique_ptr<Vm>> neighbour = backend->Start(spec2);
    ASSERT_TRUE(neighbour.ok()) << neighbour.status();
    const pid_t neighbour_pid = (*neighbour)->handle().pid;
    EXPECT_NE(StatusField(neighbour_pid, "Uid:"), StatusField(first.pid, "Uid:"));
    EXPECT_NE(Namespace(std::to_string(neighbour_pid), "mnt"), Namespace(vmm, "mnt"));

    // Code that took over the first VMM gets nowhere.
    int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(listener, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ASSERT_EQ(::listen(listener, 4), 0);
    socklen_t len = sizeof(addr);
    ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    const std::string port = std::to_string(ntohs(addr.sin_port));
    const std::string n_pid = std::to_string(neighbour_pid);
    for (const auto& [args, want] : std::vector<std::pair<std::vector<std::string>, std::string>>{
             {{"open", "/etc/passwd"}, "errno=ENOENT\n"},
             {{"open", sb + "/sandbox.pb"}, "errno=ENOENT\n"},
             {{"open", sb2 + "/disk.img", "rw"}, "errno=ENOENT\n"},
             {{"socket-inet", port}, "errno=ENETUNREACH\n"},
             {{"kill", n_pid}, "errno=ESRCH\n"},
             {{"ptrace", n_pid}, "errno=ESRCH\n"},
             {{"kill", self}, "errno=ESRCH\n"},
             {{"ptrace", self}, "errno=ESRCH\n"},
         }) {
      EXPECT_EQ(ProbeInJailOf(first.pid, uid, args), want) << absl::StrJoin(args, " ");
    }
    // The template's files: read-only twice over (root's, mode 0644, and
    // bound read-only; which error comes first depends on the filesystem).
    for (const std::string& shared : {tpl.rootfs, build->snapshot_dir + "/vmstate"}) {
      EXPECT_THAT(ProbeInJailOf(first.pid, uid, {"open", shared, "rw"}),
                  ::testing::AnyOf("errno=EROFS\n", "errno=EACCES\n"))
          << shared;
      EXPECT_EQ(ProbeInJailOf(first.pid, uid, {"open", shared}), "") << shared;
    }
    // The control: its own directory is writable, as it must be.
    EXPECT_EQ(ProbeInJailOf(first.pid, uid, {"open", sb + "/vm/console.log", "rw"}), "");
    ::close(listener);
    EXPECT_TRUE((*neighbour)->agent().Ping().ok());
    (*neighbour)->Kill();

    // A forbidden system call in a jailed VMM (the hidden test hook, on a
    // vCPU thread): SIGSYS kills it, and Start says so.
    VmmBackendOptions hooked = options;
    hooked.extra_vmm_args = {"--seccomp-test-forbidden-syscall", "vcpu"};
    absl::StatusOr<std::unique_ptr<Vm>> killed = NewVmmBackend(hooked)->Start(spec2);
    ASSERT_FALSE(killed.ok());
    EXPECT_THAT(killed.status().message(), HasSubstr("SIGSYS")) << killed.status();
  }

  agent::Client& agent = (*vm)->agent();
  absl::StatusOr<agent::ExecResult> hi = agent.Run({"echo", "hi"});
  ASSERT_TRUE(hi.ok()) << hi.status();
  EXPECT_EQ(hi->stdout_data, "hi\n");
  ASSERT_TRUE(agent.WriteFileFromString("/root/note.txt", "kept across sleep\n").ok());
  // The disk quota: / is as large as the sandbox's filesystem (64 MiB less
  // ext4's metadata and journal), not the slot.
  absl::StatusOr<agent::ExecResult> df = agent.Run({"df", "-k", "--output=size", "/"});
  ASSERT_TRUE(df.ok()) << df.status();
  std::printf("df -k / in the sandbox:\n%s", df->stdout_data.c_str());
  uint64_t root_kib = 0;
  {
    std::vector<std::string> lines =
        absl::StrSplit(absl::StripAsciiWhitespace(df->stdout_data), '\n');
    ASSERT_EQ(lines.size(), 2u) << df->stdout_data;
    ASSERT_TRUE(absl::SimpleAtoi(absl::StripAsciiWhitespace(lines[1]), &root_kib))
        << df->stdout_data;
  }
  EXPECT_GT(root_kib, uint64_t{48} << 10);
  EXPECT_LE(root_kib, uint64_t{64} << 10);
  // Beyond it: ENOSPC, and the sandbox goes on.
  agent::Exec fill;
  fill.set_shell("dd if=/dev/zero of=/root/fill bs=1M count=100 conv=fsync");
  fill.set_close_stdin(true);
  t = Clock::now();
  absl::StatusOr<agent::ExecResult> filled = agent.Run(fill);
  const double fill_s = SecondsSince(t);
  ASSERT_TRUE(filled.ok()) << filled.status();
  EXPECT_NE(filled->exited.exit_code(), 0) << filled->stderr_data;
  EXPECT_THAT(filled->stderr_data, HasSubstr("No space left on device"));
  ASSERT_TRUE(agent.Remove("/root/fill", false).ok());
  absl::StatusOr<agent::ExecResult> after_fill = agent.Run({"echo", "still here"});
  ASSERT_TRUE(after_fill.ok()) << after_fill.status();
  EXPECT_EQ(after_fill->stdout_data, "still here\n");
  agent::Exec counter;
  counter.set_shell("i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 1; done");
  counter.set_background(true);
  absl::StatusOr<std::unique_ptr<agent::ExecStream>> stream = agent.Start(counter);
  ASSERT_TRUE(stream.ok()) << stream.status();
  const uint64_t counter_id = (*stream)->process_id();
  (*stream)->Close();  // a background process goes on
  const uint64_t before_sleep = WaitForCounterAbove(agent, 1);
  ASSERT_GT(before_sleep, 1u) << "the background counter did not count";

  // Sleep: a diff snapshot, then the VMM is gone.
  const std::string snapshot = sb + "/snapshot";
  t = Clock::now();
  absl::Status slept = (*vm)->Sleep(snapshot);
  ASSERT_TRUE(slept.ok()) << slept;
  const double sleep1_s = SecondsSince(t);
  EXPECT_FALSE((*vm)->Alive(&why));
  EXPECT_THAT(why, HasSubstr("sleep"));
  EXPECT_FALSE(fs::exists(absl::StrCat("/proc/", first.pid)));
  EXPECT_TRUE(fs::exists(snapshot + "/vmstate"));
  EXPECT_FALSE(fs::exists(snapshot + ".new"));
  if (options.cgroups.has_value()) {
    for (const std::string& parent : options.cgroups->parent_dirs()) {
      EXPECT_FALSE(fs::exists(parent + "/" + spec.cgroup_name));
    }
  }
  vm->reset();

  // Wake: the file is there, the counter counts on. The woken guest has
  // its disk mounted already: no attach.
  spec.snapshot_dir = snapshot;
  spec.attach_device.clear();
  t = Clock::now();
  vm = backend->Start(spec);
  ASSERT_TRUE(vm.ok()) << vm.status();
  const double wake1_s = SecondsSince(t);
  agent::Client& woken = (*vm)->agent();
  absl::StatusOr<std::string> note = woken.ReadFileToString("/root/note.txt");
  ASSERT_TRUE(note.ok()) << note.status();
  EXPECT_EQ(*note, "kept across sleep\n");
  const uint64_t after_wake = ReadCounter(woken);
  EXPECT_GE(after_wake, before_sleep);
  EXPECT_GT(WaitForCounterAbove(woken, after_wake), after_wake)
      << "the background process stopped counting";
  absl::StatusOr<std::vector<agent::ProcessList::Process>> processes =
      woken.ListProcesses();
  ASSERT_TRUE(processes.ok()) << processes.status();
  bool found = false;
  for (const auto& p : *processes) {
    if (p.process_id() == counter_id) found = p.running();
  }
  EXPECT_TRUE(found) << "background process " << counter_id << " is not listed as running";

  // Sleep and wake again: the sandbox's snapshot is replaced (again a diff
  // against the template).
  ASSERT_TRUE(woken.WriteFileFromString("/root/second.txt", "second\n").ok());
  t = Clock::now();
  slept = (*vm)->Sleep(snapshot);
  ASSERT_TRUE(slept.ok()) << slept;
  const double sleep2_s = SecondsSince(t);
  vm->reset();
  EXPECT_FALSE(fs::exists(snapshot + ".new"));
  EXPECT_FALSE(fs::exists(snapshot + ".old"));
  t = Clock::now();
  vm = backend->Start(spec);
  ASSERT_TRUE(vm.ok()) << vm.status();
  const double wake2_s = SecondsSince(t);
  absl::StatusOr<std::string> second = (*vm)->agent().ReadFileToString("/root/second.txt");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(*second, "second\n");

  // A restarted sandboxd: another backend adopts the running VM.
  std::unique_ptr<VmBackend> backend2 = NewVmmBackend(options);
  const VmHandle handle = (*vm)->handle();
  t = Clock::now();
  absl::StatusOr<std::unique_ptr<Vm>> adopted = backend2->Adopt(spec, handle);
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  const double adopt_s = SecondsSince(t);
  absl::StatusOr<agent::ExecResult> r = (*adopted)->agent().Run({"echo", "adopted"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stdout_data, "adopted\n");
  EXPECT_TRUE(absl::IsNotFound(
      backend2->Adopt(spec, {.pid = handle.pid, .start_ticks = handle.start_ticks + 1})
          .status()));
  VmSpec other = spec;
  other.dir = tpl.dir;
  EXPECT_TRUE(absl::IsNotFound(backend2->Adopt(other, handle).status()));

  // A file synced to the disk just before the VMM dies.
  ASSERT_TRUE((*adopted)->agent().WriteFileFromString("/root/third.txt", "third\n").ok());
  ASSERT_TRUE((*adopted)->agent().Sync().ok());

  // Kill (a VMM crash, as far as the sandbox can tell): both handles see
  // it end.
  (*vm)->Kill();
  EXPECT_FALSE((*vm)->Alive(&why));
  EXPECT_THAT(why, HasSubstr("killed"));
  EXPECT_FALSE((*adopted)->Alive(&why));
  std::printf("adopted handle after the kill: %s\n", why.c_str());
  (*adopted)->Kill();  // idempotent
  (*vm)->Kill();
  EXPECT_FALSE(fs::exists(absl::StrCat("/proc/", handle.pid)));
  if (options.cgroups.has_value()) {
    for (const std::string& parent : options.cgroups->parent_dirs()) {
      EXPECT_FALSE(fs::exists(parent + "/" + spec.cgroup_name));
    }
  }

  // Crash recovery: the template's snapshot again, the same disk attached
  // (e2fsck -p replays its journal): the files are back.
  spec.snapshot_dir = build->snapshot_dir;
  spec.attach_device = "/dev/vdb";
  t = Clock::now();
  vm = backend->Start(spec);
  ASSERT_TRUE(vm.ok()) << vm.status();
  const double recover_s = SecondsSince(t);
  // What the guest said about its disk (e2fsck replaying the journal).
  {
    std::vector<std::string> console =
        absl::StrSplit(testing::ReadFileToString(sb + "/vm/console.log"), '\n');
    for (const std::string& line : console) {
      if (line.find("e2fsck") != std::string::npos ||
          line.find("/dev/vdb") != std::string::npos) {
        std::printf("recovery console: %s\n", line.c_str());
      }
    }
  }
  for (const auto& [path, text] :
       std::vector<std::pair<std::string, std::string>>{{"/root/note.txt", "kept across sleep\n"},
                                                        {"/root/second.txt", "second\n"},
                                                        {"/root/third.txt", "third\n"}}) {
    absl::StatusOr<std::string> got = (*vm)->agent().ReadFileToString(path);
    ASSERT_TRUE(got.ok()) << path << ": " << got.status();
    EXPECT_EQ(*got, text) << path;
  }
  absl::StatusOr<agent::ExecResult> writable = (*vm)->agent().Run(
      {"sh", "-c", "echo after > /root/after.txt && cat /root/after.txt"});
  ASSERT_TRUE(writable.ok()) << writable.status();
  EXPECT_EQ(writable->stdout_data, "after\n") << writable->stderr_data;
  (*vm)->Kill();
  EXPECT_FALSE((*vm)->Alive(&why));

  std::printf(
      "template build %.1f s; start (with attach) %.2f s; 100 MiB into a 64 MiB disk %.2f s; "
      "sleep %.2f s; wake %.2f s; sleep again %.2f s; wake again %.2f s; adopt %.2f s; "
      "recovery from the template (with attach) %.2f s\n",
      build->seconds, start_s, fill_s, sleep1_s, wake1_s, sleep2_s, wake2_s, adopt_s,
      recover_s);
}

}  // namespace
}  // namespace sbx::sandboxd
