#include "sandboxd/vmm_jail.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <vector>
#include <string>

#include "base/test_facility.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sbx::sandboxd {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

TEST(UidPoolTest, HandsOutEachIdOnceAndTakesThemBack) {
  UidPool pool(5000, 3);
  EXPECT_EQ(*pool.Allocate(), 5000u);
  EXPECT_EQ(*pool.Allocate(), 5001u);
  EXPECT_TRUE(pool.MarkUsed(5002));  // an adopted VMM's
  absl::StatusOr<uid_t> none = pool.Allocate();
  EXPECT_TRUE(absl::IsResourceExhausted(none.status())) << none.status();
  EXPECT_THAT(none.status().message(), HasSubstr("--jail-uids"));
  pool.Release(5001);
  EXPECT_EQ(*pool.Allocate(), 5001u);
  EXPECT_FALSE(pool.MarkUsed(4999));
  EXPECT_FALSE(pool.MarkUsed(5003));
  EXPECT_TRUE(pool.Contains(5002));
  EXPECT_FALSE(pool.Contains(5003));
}

TEST(CheckUidRangeIsFreeTest, NamesAUserOrGroupInTheRange) {
  const std::string dir = ::testing::TempDir();
  const std::string passwd = dir + "/vmm_jail_passwd";
  const std::string group = dir + "/vmm_jail_group";
  std::ofstream(passwd) << "root:x:0:0:root:/root:/bin/bash\n"
                           "odd line\n"
                           "alice:x:1000:1000::/home/alice:/bin/sh\n";
  std::ofstream(group) << "root:x:0:\nkvm:x:993:\n";
  EXPECT_TRUE(CheckUidRangeIsFree({.first_uid = 800'000'000, .uid_count = 65536}, passwd, group)
                  .ok());
  absl::Status user = CheckUidRangeIsFree({.first_uid = 1000, .uid_count = 10}, passwd, group);
  EXPECT_TRUE(absl::IsFailedPrecondition(user)) << user;
  EXPECT_THAT(user.message(), HasSubstr("user alice (1000"));
  EXPECT_THAT(user.message(), HasSubstr("--jail-uids"));
  absl::Status grp = CheckUidRangeIsFree({.first_uid = 990, .uid_count = 5}, passwd, group);
  EXPECT_THAT(grp.message(), HasSubstr("group kvm (993"));
  EXPECT_TRUE(CheckUidRangeIsFree({.first_uid = 1, .uid_count = 5}, dir + "/none", dir + "/none")
                  .ok());
  std::remove(passwd.c_str());
  std::remove(group.c_str());
}

TEST(CheckStaticExecutableTest, TellsStaticFromDynamic) {
  EXPECT_TRUE(CheckStaticExecutable(SBX_STATIC_BINARY).ok());
  absl::Status dynamic = CheckStaticExecutable("/bin/sh");
  EXPECT_TRUE(absl::IsFailedPrecondition(dynamic)) << dynamic;
  EXPECT_THAT(dynamic.message(), HasSubstr("--no-jail"));
  EXPECT_FALSE(CheckStaticExecutable("/etc/hostname").ok());
  EXPECT_FALSE(CheckStaticExecutable("/no/such/file").ok());
}

class VmmJailFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "vmmjail_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { fs::remove_all(dir_); }

  void Listen(const std::string& path) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    path.copy(addr.sun_path, sizeof(addr.sun_path) - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ASSERT_EQ(::listen(fd, 4), 0);
    fds_.push_back(fd);
  }
  ~VmmJailFilesTest() override {
    for (int fd : fds_) ::close(fd);
  }

  std::string dir_;
  std::vector<int> fds_;
};

TEST_F(VmmJailFilesTest, ChownTreeNeverFollowsASymlink) {
  testing::FacilityCheck root;
  root.available = ::geteuid() == 0;
  root.reason = "chown to another uid needs root";
  SBX_REQUIRE(root);
  const std::string outside = dir_ + "/outside";
  std::ofstream(outside) << "host file\n";
  fs::create_directories(dir_ + "/vm/sub");
  std::ofstream(dir_ + "/vm/sub/file") << "x";
  fs::create_symlink(outside, dir_ + "/vm/link");
  ASSERT_TRUE(ChownTree(dir_ + "/vm", 4321, 4322).ok());
  struct stat st;
  for (const char* p : {"/vm", "/vm/sub", "/vm/sub/file", "/vm/link"}) {
    ASSERT_EQ(::lstat((dir_ + p).c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, 4321u) << p;
    EXPECT_EQ(st.st_gid, 4322u) << p;
  }
  ASSERT_EQ(::stat(outside.c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 0u) << "the symlink's target changed owner";
}

TEST_F(VmmJailFilesTest, PinnedSocketKeepsTheFirstSocketAndRefusesTheRest) {
  const std::string path = dir_ + "/control.sock";
  PinnedSocket pinned(path, std::nullopt);
  EXPECT_TRUE(absl::IsUnavailable(pinned.Path().status()));
  // A symlink to another socket (sandboxd's own, a neighbour's) is refused.
  const std::string other = dir_ + "/other.sock";
  Listen(other);
  fs::create_symlink(other, path);
  absl::StatusOr<std::string> refused = pinned.Path();
  EXPECT_TRUE(absl::IsPermissionDenied(refused.status())) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("symlink"));
  // The VMM's real socket is pinned; swapping the name later changes nothing.
  fs::remove(path);
  Listen(path);
  absl::StatusOr<std::string> first = pinned.Path();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_THAT(*first, ::testing::StartsWith("/proc/self/fd/"));
  struct stat pinned_st, real_st;
  ASSERT_EQ(::stat(first->c_str(), &pinned_st), 0);
  ASSERT_EQ(::stat(path.c_str(), &real_st), 0);
  EXPECT_EQ(pinned_st.st_ino, real_st.st_ino);
  fs::remove(path);
  fs::create_symlink(other, path);
  absl::StatusOr<std::string> again = pinned.Path();
  ASSERT_TRUE(again.ok());
  ASSERT_EQ(::stat(again->c_str(), &pinned_st), 0);
  EXPECT_EQ(pinned_st.st_ino, real_st.st_ino) << "redirected to the symlink's target";

  // With an owner: a socket of another uid is refused.
  const std::string theirs = dir_ + "/theirs.sock";
  Listen(theirs);
  PinnedSocket owned(theirs, ::geteuid() + 1);
  EXPECT_TRUE(absl::IsPermissionDenied(owned.Path().status()));
  PinnedSocket mine(theirs, ::geteuid());
  EXPECT_TRUE(mine.Path().ok());
}

TEST(ProcessUidTest, OwnAndGone) {
  absl::StatusOr<uid_t> mine = ProcessUid(::getpid());
  ASSERT_TRUE(mine.ok()) << mine.status();
  EXPECT_EQ(*mine, ::getuid());
  EXPECT_TRUE(absl::IsNotFound(ProcessUid(0x3ffffff0).status()));
}

}  // namespace
}  // namespace sbx::sandboxd
