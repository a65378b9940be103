#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "vmm/kvm/kvm.h"

namespace sbx::vmm {
namespace {

using ::testing::HasSubstr;

// What a user sees when KVM cannot be opened; runs without KVM.
TEST(KvmOpenTest, MissingDeviceSaysWhatToDo) {
  absl::StatusOr<std::unique_ptr<Kvm>> kvm = Kvm::Open("/nonexistent/kvm");
  ASSERT_FALSE(kvm.ok());
  EXPECT_EQ(kvm.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(kvm.status().message()),
              HasSubstr("open /nonexistent/kvm: No such file or directory"));
  EXPECT_THAT(std::string(kvm.status().message()),
              HasSubstr("load kvm_intel or kvm_amd"));
}

TEST(KvmOpenTest, NotAKvmDeviceIsRefused) {
  // /dev/null opens but answers no KVM ioctl.
  absl::StatusOr<std::unique_ptr<Kvm>> kvm = Kvm::Open("/dev/null");
  ASSERT_FALSE(kvm.ok());
  EXPECT_EQ(kvm.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(kvm.status().message()),
              HasSubstr("KVM API version -1"));
}

TEST(KvmOpenTest, PermissionDeniedAsNonRootMentionsGroupKvm) {
  std::string dir = ::testing::TempDir() + "kvm_perm_XXXXXX";
  ASSERT_NE(::mkdtemp(dir.data()), nullptr);
  std::string node = dir + "/kvm";
  if (::mknod(node.c_str(), S_IFCHR | 0600, makedev(10, 232)) != 0) {
    ASSERT_EQ(errno, EPERM) << "mknod " << node;
    GTEST_SKIP() << "creating a device node needs root";
  }
  ::chmod(dir.c_str(), 0755);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // As nobody, the 0600 root-owned node cannot be opened.
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(3);
    absl::StatusOr<std::unique_ptr<Kvm>> kvm = Kvm::Open(node);
    bool ok = !kvm.ok() &&
              kvm.status().code() == absl::StatusCode::kPermissionDenied &&
              std::string(kvm.status().message()).find("group kvm") !=
                  std::string::npos;
    ::_exit(ok ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ::unlink(node.c_str());
  ::rmdir(dir.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace sbx::vmm
