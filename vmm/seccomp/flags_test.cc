// sbx-vmm's seccomp flags (vmm/config.cc ParseArgs): kill by default, the
// mode and the hidden test hook in both flag forms, bad values refused.
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "vmm/config.h"

namespace sbx::vmm {
namespace {

using ::testing::HasSubstr;

TEST(SeccompFlagsTest, SbxVmmFiltersByDefaultTheLibraryDoesNot) {
  EXPECT_EQ(MachineConfig().seccomp.mode, seccomp::Mode::kOff);
  absl::StatusOr<MachineConfig> c = ParseArgs({"--kernel", "k"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->seccomp.mode, seccomp::Mode::kKill);
  EXPECT_FALSE(c->seccomp.test_violation.has_value());
}

TEST(SeccompFlagsTest, ModeAndHookInBothForms) {
  absl::StatusOr<MachineConfig> c =
      ParseArgs({"--kernel", "k", "--seccomp=log", "--seccomp-test-forbidden-syscall", "loop"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->seccomp.mode, seccomp::Mode::kLog);
  EXPECT_EQ(c->seccomp.test_violation, seccomp::Role::kEventLoop);
  c = ParseArgs({"--kernel", "k", "--seccomp", "off",
                 "--seccomp-test-forbidden-syscall=vcpu"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->seccomp.mode, seccomp::Mode::kOff);
  EXPECT_EQ(c->seccomp.test_violation, seccomp::Role::kVcpu);
  // Allowed with --restore (the snapshot does not fix it).
  c = ParseArgs({"--restore", "/snap", "--seccomp", "log"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->seccomp.mode, seccomp::Mode::kLog);
}

TEST(SeccompFlagsTest, BadValuesAreRefused) {
  EXPECT_THAT(ParseArgs({"--kernel", "k", "--seccomp=trap"}).status().message(),
              HasSubstr("--seccomp: 'trap' is not kill, log or off"));
  EXPECT_THAT(ParseArgs({"--kernel", "k", "--seccomp"}).status().message(),
              HasSubstr("--seccomp needs a value"));
  EXPECT_THAT(
      ParseArgs({"--kernel", "k", "--seccomp-test-forbidden-syscall", "gpu"})
          .status()
          .message(),
      HasSubstr("'gpu' is not vcpu"));
  EXPECT_THAT(ParseArgs({"--kernel", "k", "--seccompx"}).status().message(),
              HasSubstr("unknown argument '--seccompx'"));
}

TEST(SeccompFlagsTest, UsageDocumentsTheModeButNotTheHook) {
  EXPECT_THAT(Usage(), HasSubstr("--seccomp MODE"));
  EXPECT_THAT(Usage(), ::testing::Not(HasSubstr("forbidden-syscall")));
}

}  // namespace
}  // namespace sbx::vmm
