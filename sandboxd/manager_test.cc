#include "sandboxd/manager.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>
#include <thread>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sandboxd/testing/fake_backend.h"

namespace sbx::sandboxd {
namespace {

using ::testing::HasSubstr;

class ManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Short: the fake VMs' unix sockets live below it.
    static int n = 0;
    dir_ = absl::StrCat("/tmp/sbxmt", ::getpid(), "_", n++);
    std::filesystem::remove_all(dir_);
    registry_ = std::make_shared<testing::Registry>();
  }
  void TearDown() override {
    manager_.reset();
    testing::KillAll(*registry_);
    std::filesystem::remove_all(dir_);
  }

  ManagerOptions Options() {
    ManagerOptions o = testing::FakeManagerOptions(dir_);
    o.housekeeping_interval = absl::ZeroDuration();  // tests call Housekeep()
    return o;
  }

  void Start(ManagerOptions options) {
    auto m = Manager::Create(std::move(options),
                             std::make_unique<testing::FakeBackend>(registry_, SBX_AGENT_BINARY));
    ASSERT_TRUE(m.ok()) << m.status();
    manager_ = std::move(*m);
  }
  void Start() { Start(Options()); }

  sbx::v1::Sandbox MustCreate(sbx::v1::CreateSandboxRequest request = {}) {
    absl::StatusOr<sbx::v1::Sandbox> s = manager_->Create(request);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : sbx::v1::Sandbox();
  }

  VmSpec LastStart() {
    absl::MutexLock lock(&registry_->mu);
    return registry_->starts.empty() ? VmSpec() : registry_->starts.back().spec;
  }
  size_t Starts() {
    absl::MutexLock lock(&registry_->mu);
    return registry_->starts.size();
  }
  size_t LiveVms() {
    absl::MutexLock lock(&registry_->mu);
    return registry_->live.size();
  }

  std::string dir_;
  std::shared_ptr<testing::Registry> registry_;
  std::unique_ptr<Manager> manager_;
};

TEST_F(ManagerTest, CreateBuildsTheDefaultTemplateOnceAndRestoresIt) {
  Start();
  sbx::v1::CreateSandboxRequest request;
  request.set_disk_mib(100);
  (*request.mutable_labels())["team"] = "a";
  sbx::v1::Sandbox s = MustCreate(request);
  EXPECT_TRUE(ValidateSandboxId(s.id()).ok()) << s.id();
  EXPECT_EQ(s.state(), sbx::v1::RUNNING);
  EXPECT_EQ(s.template_(), "default");
  EXPECT_EQ(s.disk_mib(), 100u);
  MustCreate();
  {
    absl::MutexLock lock(&registry_->mu);
    EXPECT_EQ(registry_->templates_built, 1);
  }
  // A new sandbox restores the template's snapshot and attaches its disk.
  VmSpec spec = LastStart();
  EXPECT_THAT(spec.snapshot_dir, HasSubstr("/templates/default/snapshot"));
  EXPECT_EQ(spec.attach_device, "/dev/vdb");
  ASSERT_EQ(spec.disks.size(), 2u);
  EXPECT_EQ(spec.disks[0], std::filesystem::canonical(dir_ + "/images/rootfs.ext4").string());
  // The disk: the template's slot, with a filesystem of the asked size.
  const std::string disk = absl::StrCat(dir_, "/state/sandboxes/", s.id(), "/disk.img");
  EXPECT_EQ(std::filesystem::file_size(disk), uint64_t{4096} << 20);
  std::ifstream fs(disk + ".fs_mib");
  uint64_t fs_mib = 0;
  fs >> fs_mib;
  EXPECT_EQ(fs_mib, 100u);
  EXPECT_EQ(spec.limits.cpu_millis, 1000u);
  EXPECT_EQ(spec.limits.memory_bytes, uint64_t{512 + 64} << 20);

  // Exec through the lease reaches the (fake VM's real) agent.
  auto lease = manager_->Acquire(s.id(), true);
  ASSERT_TRUE(lease.ok()) << lease.status();
  auto result = (*lease)->agent().Run({"echo", "hi"});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->stdout_data, "hi\n");
  EXPECT_EQ(manager_->Get(s.id())->running_execs(), 1u);
  lease->reset();
  EXPECT_EQ(manager_->Get(s.id())->running_execs(), 0u);

  sbx::v1::ListSandboxesRequest list;
  (*list.mutable_labels())["team"] = "a";
  auto listed = manager_->List(list);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->sandboxes_size(), 1);
  EXPECT_EQ(listed->sandboxes(0).id(), s.id());
}

TEST_F(ManagerTest, RequestsBeyondBoundsOrTheTemplateAreRefusedClearly) {
  Start();
  MustCreate();
  sbx::v1::CreateSandboxRequest r;
  r.set_vcpus(9);
  EXPECT_EQ(manager_->Create(r).status().code(), absl::StatusCode::kResourceExhausted);
  r = {};
  r.set_memory_mib(1 << 20);
  EXPECT_EQ(manager_->Create(r).status().code(), absl::StatusCode::kResourceExhausted);
  r = {};
  r.set_disk_mib(1 << 20);
  EXPECT_EQ(manager_->Create(r).status().code(), absl::StatusCode::kResourceExhausted);
  r = {};
  r.set_memory_mib(1024);  // the template has 512
  absl::Status s = manager_->Create(r).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("512 MiB"));
  r = {};
  r.set_template_("nope");
  EXPECT_EQ(manager_->Create(r).status().code(), absl::StatusCode::kNotFound);
  r.set_template_("../etc");
  EXPECT_EQ(manager_->Create(r).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(manager_->Get("sb-0000000000000000").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_->Get("../../etc/passwd").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(manager_->Delete("sb-../../../etc").code(), absl::StatusCode::kInvalidArgument);
  // Nothing was left behind by the refusals.
  EXPECT_EQ(manager_->List({})->sandboxes_size(), 1);
}

TEST_F(ManagerTest, AdmissionRefusesWhatTheHostCannotHoldAndSleepFreesIt) {
  ManagerOptions o = Options();
  o.host_memory_bytes = uint64_t{1} << 30;  // two 512 MiB sandboxes
  Start(o);
  sbx::v1::Sandbox a = MustCreate();
  MustCreate();
  absl::Status full = manager_->Create({}).status();
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full.message(), HasSubstr("host full"));
  ASSERT_TRUE(manager_->Sleep(a.id()).ok());
  sbx::v1::Sandbox c = MustCreate();
  // Waking `a` now would overcommit.
  EXPECT_EQ(manager_->Wake(a.id()).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(manager_->Get(a.id())->state(), sbx::v1::SLEEPING);
  ASSERT_TRUE(manager_->Delete(c.id()).ok());
  EXPECT_TRUE(manager_->Wake(a.id()).ok());
}

TEST_F(ManagerTest, SleepThenAnyRequestWakesFromTheSandboxesOwnSnapshot) {
  Start();
  sbx::v1::Sandbox s = MustCreate();
  auto slept = manager_->Sleep(s.id());
  ASSERT_TRUE(slept.ok()) << slept.status();
  EXPECT_EQ(slept->state(), sbx::v1::SLEEPING);
  EXPECT_EQ(LiveVms(), 0u);
  // Sleeping again is a no-op.
  EXPECT_TRUE(manager_->Sleep(s.id()).ok());
  auto lease = manager_->Acquire(s.id(), false);
  ASSERT_TRUE(lease.ok()) << lease.status();
  VmSpec spec = LastStart();
  EXPECT_EQ(spec.snapshot_dir, absl::StrCat(dir_, "/state/sandboxes/", s.id(), "/snapshot"));
  EXPECT_EQ(spec.attach_device, "") << "a wake must not attach the disk again";
  EXPECT_TRUE((*lease)->agent().Ping().ok());
  lease->reset();
  auto got = manager_->Get(s.id());
  EXPECT_EQ(got->state(), sbx::v1::RUNNING);
  EXPECT_EQ(got->wakes(), 1u);
}

TEST_F(ManagerTest, IdleSandboxesSleepButNotWhileInUse) {
  Start();
  sbx::v1::CreateSandboxRequest r;
  r.mutable_idle_timeout()->set_nanos(1000000);  // 1 ms
  sbx::v1::Sandbox s = MustCreate(r);
  sbx::v1::Sandbox never = MustCreate();  // default: 10 minutes
  {
    auto lease = manager_->Acquire(s.id(), true);
    ASSERT_TRUE(lease.ok());
    absl::SleepFor(absl::Milliseconds(5));
    manager_->Housekeep();
    EXPECT_EQ(manager_->Get(s.id())->state(), sbx::v1::RUNNING);
    // An explicit sleep is refused while an exec streams.
    EXPECT_EQ(manager_->Sleep(s.id()).status().code(), absl::StatusCode::kFailedPrecondition);
  }
  absl::SleepFor(absl::Milliseconds(5));
  manager_->Housekeep();
  EXPECT_EQ(manager_->Get(s.id())->state(), sbx::v1::SLEEPING);
  EXPECT_EQ(manager_->Get(never.id())->state(), sbx::v1::RUNNING);
}

TEST_F(ManagerTest, ARestartedManagerAdoptsRunningVmsAndRestartsDeadOnes) {
  Start();
  sbx::v1::Sandbox running = MustCreate();
  sbx::v1::Sandbox dies = MustCreate();
  sbx::v1::Sandbox sleeping = MustCreate();
  ASSERT_TRUE(manager_->Sleep(sleeping.id()).ok());
  const size_t starts = Starts();
  manager_.reset();  // "kill -9 sandboxd": VMs keep running
  {
    absl::MutexLock lock(&registry_->mu);
    for (auto it = registry_->live.begin(); it != registry_->live.end(); ++it) {
      if (it->second.find(dies.id()) != std::string::npos) {
        testing::KillAndReap(it->first);
        registry_->live.erase(it);
        break;
      }
    }
  }
  Start();
  EXPECT_EQ(Starts(), starts) << "adoption starts nothing";
  EXPECT_EQ(manager_->Get(running.id())->state(), sbx::v1::RUNNING);
  EXPECT_EQ(manager_->Get(sleeping.id())->state(), sbx::v1::SLEEPING);
  EXPECT_EQ(manager_->Get(dies.id())->state(), sbx::v1::SLEEPING);
  // The adopted VM answers.
  auto lease = manager_->Acquire(running.id(), false);
  ASSERT_TRUE(lease.ok());
  EXPECT_TRUE((*lease)->agent().Ping().ok());
  lease->reset();
  EXPECT_EQ(Starts(), starts);
  // The one whose VMM died restarts from its template with its disk.
  ASSERT_TRUE(manager_->Acquire(dies.id(), false).ok());
  EXPECT_THAT(LastStart().snapshot_dir, HasSubstr("/templates/default/snapshot"));
  EXPECT_EQ(LastStart().attach_device, "/dev/vdb");
  // The sleeping one wakes from its own snapshot.
  ASSERT_TRUE(manager_->Acquire(sleeping.id(), false).ok());
  EXPECT_THAT(LastStart().snapshot_dir, HasSubstr(sleeping.id() + "/snapshot"));
}

TEST_F(ManagerTest, AVmmThatDiesIsNoticedAndTheSandboxComesBackWithItsDisk) {
  Start();
  sbx::v1::Sandbox s = MustCreate();
  {
    absl::MutexLock lock(&registry_->mu);
    for (const auto& [pid, d] : registry_->live) testing::KillAndReap(pid);
    registry_->live.clear();
  }
  manager_->Housekeep();
  EXPECT_EQ(manager_->Get(s.id())->state(), sbx::v1::SLEEPING);
  EXPECT_EQ(manager_->Stats().vmm_deaths, 1u);
  auto lease = manager_->Acquire(s.id(), false);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(LastStart().attach_device, "/dev/vdb");
  EXPECT_TRUE((*lease)->agent().Ping().ok());
}

TEST_F(ManagerTest, AVmmKilledBySeccompFailsTheSandboxWithTheReason) {
  Start();
  sbx::v1::Sandbox s = MustCreate();
  {
    absl::MutexLock lock(&registry_->mu);
    registry_->death_reason = "killed by signal 31 (SIGSYS)";
  }
  testing::KillAll(*registry_);
  manager_->Housekeep();
  auto got = manager_->Get(s.id());
  EXPECT_EQ(got->state(), sbx::v1::FAILED);
  EXPECT_THAT(got->failure(), HasSubstr("seccomp"));
  EXPECT_THAT(got->failure(), HasSubstr("SIGSYS"));
  // Not restarted by a request; Delete works.
  EXPECT_EQ(manager_->Acquire(s.id(), false).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Starts(), 1u);
  EXPECT_TRUE(manager_->Delete(s.id()).ok());
}

TEST_F(ManagerTest, FailuresLeaveNothingBehindOrKeepTheSandboxUsable) {
  Start();
  MustCreate();  // builds the template
  {
    absl::MutexLock lock(&registry_->mu);
    registry_->next_start_error = absl::UnavailableError("VMM exited with status 1");
  }
  absl::Status failed = manager_->Create({}).status();
  EXPECT_EQ(failed.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(failed.message(), HasSubstr("VMM exited"));
  EXPECT_EQ(manager_->List({})->sandboxes_size(), 1);
  size_t dirs = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_ + "/state/sandboxes")) {
    (void)e;
    ++dirs;
  }
  EXPECT_EQ(dirs, 1u);
  // A failed sleep leaves the sandbox running.
  sbx::v1::Sandbox s = MustCreate();
  {
    absl::MutexLock lock(&registry_->mu);
    registry_->next_sleep_error = absl::InternalError("snapshot: disk full");
  }
  EXPECT_FALSE(manager_->Sleep(s.id()).ok());
  EXPECT_EQ(manager_->Get(s.id())->state(), sbx::v1::RUNNING);
  EXPECT_TRUE(manager_->Sleep(s.id()).ok());
}

size_t OpenFds() {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    (void)e;
    ++n;
  }
  return n;
}

size_t Entries(const std::string& dir) {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    (void)e;
    ++n;
  }
  return n;
}

// A hostile client (issue 7): thousands of creates at once, far more than
// the host holds. Each is admitted or refused with RESOURCE_EXHAUSTED, and
// once everything is deleted nothing is left: no record, no directory, no
// VM, no descriptor.
TEST_F(ManagerTest, AFloodOfCreatesIsRefusedCleanlyAndLeavesNothing) {
  ManagerOptions o = Options();
  o.host_memory_bytes = uint64_t{4} << 30;  // eight 512 MiB sandboxes
  Start(o);
  // The template and one sandbox's worth of lazily made state first.
  ASSERT_TRUE(manager_->Delete(MustCreate().id()).ok());
  const size_t fds = OpenFds();

  constexpr int kThreads = 8;
  constexpr int kPerThread = 250;  // 2000 creates
  absl::Mutex mu;
  std::vector<std::string> created;
  std::map<absl::StatusCode, int> refused;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kPerThread; ++i) {
        absl::StatusOr<sbx::v1::Sandbox> s = manager_->Create({});
        absl::MutexLock lock(&mu);
        if (s.ok()) {
          created.push_back(s->id());
        } else {
          ++refused[s.status().code()];
          EXPECT_THAT(s.status().message(), HasSubstr("host full")) << s.status();
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(created.size(), 8u);
  EXPECT_EQ(refused.size(), 1u);
  EXPECT_EQ(refused[absl::StatusCode::kResourceExhausted], kThreads * kPerThread - 8);
  EXPECT_EQ(LiveVms(), 8u);
  for (const std::string& id : created) ASSERT_TRUE(manager_->Delete(id).ok()) << id;

  EXPECT_EQ(manager_->List({})->sandboxes_size(), 0);
  EXPECT_EQ(LiveVms(), 0u);
  EXPECT_EQ(Entries(dir_ + "/state/sandboxes"), 0u);
  EXPECT_EQ(OpenFds(), fds) << "descriptors leaked";
  // The host is empty again: as many fit as before.
  for (int i = 0; i < 8; ++i) MustCreate();
}

TEST_F(ManagerTest, DeleteTtlIdempotencyAndTemplateInUse) {
  Start();
  sbx::v1::CreateSandboxRequest r;
  r.set_idempotency_key("job-42");
  sbx::v1::Sandbox a = MustCreate(r);
  sbx::v1::Sandbox again = MustCreate(r);
  EXPECT_EQ(a.id(), again.id());
  EXPECT_EQ(manager_->DeleteTemplate("default").code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(manager_->Delete(a.id()).ok());
  EXPECT_FALSE(std::filesystem::exists(absl::StrCat(dir_, "/state/sandboxes/", a.id())));
  EXPECT_EQ(LiveVms(), 0u);
  EXPECT_EQ(manager_->Delete(a.id()).code(), absl::StatusCode::kNotFound);
  // The key is free again.
  EXPECT_NE(MustCreate(r).id(), a.id());

  sbx::v1::CreateSandboxRequest short_lived;
  short_lived.mutable_ttl()->set_nanos(1000000);
  sbx::v1::Sandbox t = MustCreate(short_lived);
  absl::SleepFor(absl::Milliseconds(5));
  manager_->Housekeep();
  EXPECT_EQ(manager_->Get(t.id()).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ManagerTest, ListPagesInIdOrder) {
  Start();
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(MustCreate().id());
  std::sort(ids.begin(), ids.end());
  sbx::v1::ListSandboxesRequest r;
  r.set_page_size(2);
  std::vector<std::string> seen;
  for (;;) {
    auto page = manager_->List(r);
    ASSERT_TRUE(page.ok());
    for (const auto& s : page->sandboxes()) seen.push_back(s.id());
    if (page->next_page_token().empty()) break;
    r.set_page_token(page->next_page_token());
  }
  EXPECT_EQ(seen, ids);
  r.set_page_token("x/../y");
  EXPECT_EQ(manager_->List(r).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sbx::sandboxd
