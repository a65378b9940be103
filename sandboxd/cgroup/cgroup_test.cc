// Against the host's real cgroups (v1 or v2, whichever it runs): needs
// root. Each test uses its own parent group, removed at the end.
#include "sandboxd/cgroup/cgroup.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/test_facility.h"
#include "gtest/gtest.h"

namespace sbx::sandboxd {
namespace {

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// A child that waits until the parent has put it into a group, then runs
// `body` and exits with its result.
template <typename Body>
pid_t SpawnInGroup(Cgroup& group, Body body) {
  int go[2];
  if (pipe(go) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    close(go[1]);
    char c;
    if (read(go[0], &c, 1) != 1) _exit(100);
    _exit(body());
  }
  close(go[0]);
  absl::Status added = group.AddProcess(pid);
  EXPECT_TRUE(added.ok()) << added;
  [[maybe_unused]] ssize_t n = write(go[1], "g", 1);
  close(go[1]);
  return pid;
}

class CgroupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::FacilityCheck root;
    root.available = geteuid() == 0;
    root.reason = "creating cgroups needs root";
    SBX_REQUIRE(root);
    parent_ = absl::StrCat("sbx-test-", getpid());
    absl::StatusOr<CgroupRoot> opened = CgroupRoot::Open("/sys/fs/cgroup", parent_);
    ASSERT_TRUE(opened.ok()) << opened.status();
    root_ = std::make_unique<CgroupRoot>(*opened);
  }
  void TearDown() override {
    if (root_) {
      for (const std::string& dir : root_->parent_dirs()) rmdir(dir.c_str());
    }
  }

  std::string parent_;
  std::unique_ptr<CgroupRoot> root_;
};

TEST(CgroupNameTest, OnlySafeNames) {
  EXPECT_TRUE(Cgroup::ValidateName("sbx-1234_ab").ok());
  EXPECT_FALSE(Cgroup::ValidateName("").ok());
  EXPECT_FALSE(Cgroup::ValidateName("../../etc").ok());
  EXPECT_FALSE(Cgroup::ValidateName("a/b").ok());
  EXPECT_FALSE(Cgroup::ValidateName("UPPER").ok());
  EXPECT_FALSE(Cgroup::ValidateName(std::string(65, 'a')).ok());
}

TEST_F(CgroupTest, CreateAppliesLimitsAndRemoveCleansUp) {
  CgroupLimits limits{.cpu_millis = 500, .memory_bytes = 64 << 20, .pids_max = 16};
  absl::StatusOr<std::unique_ptr<Cgroup>> group =
      Cgroup::Create(*root_, "limits", limits);
  ASSERT_TRUE(group.ok()) << group.status();
  for (const std::string& dir : (*group)->dirs()) EXPECT_TRUE(Exists(dir));
  std::string cpu, memory, pids;
  if (root_->version() == CgroupRoot::Version::kV2) {
    cpu = testing::ReadFileToString((*group)->dirs()[0] + "/cpu.max");
    memory = testing::ReadFileToString((*group)->dirs()[0] + "/memory.max");
    pids = testing::ReadFileToString((*group)->dirs()[0] + "/pids.max");
    EXPECT_EQ(cpu, "50000 100000\n");
  } else {
    cpu = testing::ReadFileToString((*group)->dirs()[0] + "/cpu.cfs_quota_us");
    memory = testing::ReadFileToString((*group)->dirs()[1] +
                                       "/memory.limit_in_bytes");
    pids = testing::ReadFileToString((*group)->dirs()[2] + "/pids.max");
    EXPECT_EQ(cpu, "50000\n");
  }
  EXPECT_EQ(memory, absl::StrCat(64 << 20, "\n"));
  EXPECT_EQ(pids, "16\n");

  // The same name again is refused, not silently shared.
  EXPECT_EQ(Cgroup::Create(*root_, "limits", limits).status().code(),
            absl::StatusCode::kAlreadyExists);
  // After a daemon restart the group is adopted.
  absl::StatusOr<std::unique_ptr<Cgroup>> adopted = Cgroup::Adopt(*root_, "limits");
  ASSERT_TRUE(adopted.ok()) << adopted.status();

  ASSERT_TRUE((*group)->Remove().ok());
  for (const std::string& dir : (*group)->dirs()) EXPECT_FALSE(Exists(dir));
  EXPECT_TRUE((*adopted)->Remove().ok());  // already gone: fine
}

TEST_F(CgroupTest, MemoryLimitIsEnforced) {
  absl::StatusOr<std::unique_ptr<Cgroup>> group =
      Cgroup::Create(*root_, "memory", {.memory_bytes = 64 << 20});
  ASSERT_TRUE(group.ok()) << group.status();
  pid_t pid = SpawnInGroup(**group, [] {
    // 200 MiB, every page touched: more than the group may hold.
    size_t size = size_t{200} << 20;
    char* p = static_cast<char*>(mmap(nullptr, size, PROT_READ | PROT_WRITE,
                                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (p == MAP_FAILED) return 2;
    for (size_t i = 0; i < size; i += 4096) p[i] = 1;
    return 0;
  });
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "200 MiB under a 64 MiB limit was not OOM-killed (status " << status
      << ")";
}

TEST_F(CgroupTest, PidsLimitIsEnforced) {
  absl::StatusOr<std::unique_ptr<Cgroup>> group =
      Cgroup::Create(*root_, "pids", {.pids_max = 4});
  ASSERT_TRUE(group.ok()) << group.status();
  pid_t pid = SpawnInGroup(**group, [] {
    // Itself plus at most 3 more: forking 10 must fail for some.
    int forked = 0;
    for (int i = 0; i < 10; ++i) {
      pid_t child = fork();
      if (child == 0) {
        pause();
        _exit(0);
      }
      if (child > 0) ++forked;
    }
    return forked;
  });
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 3);
  // The paused grandchildren are still in the group: Remove kills them.
  absl::StatusOr<std::vector<pid_t>> left = (*group)->Processes();
  ASSERT_TRUE(left.ok());
  EXPECT_EQ(left->size(), 3u);
  EXPECT_TRUE((*group)->Remove().ok());
}

TEST_F(CgroupTest, RemoveKillsWhatRuns) {
  absl::StatusOr<std::unique_ptr<Cgroup>> group =
      Cgroup::Create(*root_, "kill", {});
  ASSERT_TRUE(group.ok()) << group.status();
  pid_t pid = SpawnInGroup(**group, [] {
    // 8 MiB touched inside the group: charged to it.
    size_t size = size_t{8} << 20;
    char* p = static_cast<char*>(mmap(nullptr, size, PROT_READ | PROT_WRITE,
                                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (p != MAP_FAILED) memset(p, 1, size);
    pause();
    return 0;
  });
  // The child is in the group once AddProcess returned.
  absl::StatusOr<std::vector<pid_t>> in = (*group)->Processes();
  ASSERT_TRUE(in.ok());
  EXPECT_EQ(*in, std::vector<pid_t>{pid});
  uint64_t usage = 0;
  for (int i = 0; i < 500 && usage < (4u << 20); ++i) {
    absl::StatusOr<uint64_t> now = (*group)->MemoryUsage();
    ASSERT_TRUE(now.ok()) << now.status();
    usage = *now;
    if (usage < (4u << 20)) usleep(10'000);
  }
  EXPECT_GE(usage, 4u << 20) << "the group's memory use is not accounted";
  absl::Status removed = (*group)->Remove();
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(removed.ok()) << removed;
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

}  // namespace
}  // namespace sbx::sandboxd
