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
// cgroups.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
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
  EXPECT_FALSE(fs::exists(tpl.dir + "/vsock.sock"));
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
        absl::StrSplit(testing::ReadFileToString(sb + "/console.log"), '\n');
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
