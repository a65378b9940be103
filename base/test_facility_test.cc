#include "base/test_facility.h"

#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>

#include "gtest/gtest.h"

namespace sbx::testing {
namespace {

TEST(DecideTest, AvailableAlwaysRuns) {
  FacilityCheck ok;
  ok.available = true;
  EXPECT_EQ(Decide(ok, /*in_ci=*/false), Verdict::kRun);
  EXPECT_EQ(Decide(ok, /*in_ci=*/true), Verdict::kRun);
}

TEST(DecideTest, MissingSkipsOutsideCiAndFailsInCi) {
  FacilityCheck missing;
  missing.reason = "image not built";
  EXPECT_EQ(Decide(missing, /*in_ci=*/false), Verdict::kSkip);
  EXPECT_EQ(Decide(missing, /*in_ci=*/true), Verdict::kFail);
}

TEST(DecideTest, WhatTheMachineCannotHaveSkipsEvenInCi) {
  FacilityCheck no_kvm;
  no_kvm.machine_lacks_it = true;
  no_kvm.reason = "no kvm";
  EXPECT_EQ(Decide(no_kvm, /*in_ci=*/false), Verdict::kSkip);
  EXPECT_EQ(Decide(no_kvm, /*in_ci=*/true), Verdict::kSkip);
}

TEST(CheckKvmTest, AgreesWithTheDeviceNode) {
  FacilityCheck check = CheckKvm();
  struct stat st;
  bool node_exists = ::stat("/dev/kvm", &st) == 0;
  if (check.available) {
    EXPECT_TRUE(node_exists);
    EXPECT_TRUE(check.reason.empty());
  } else {
    EXPECT_FALSE(check.reason.empty());
  }
  if (check.machine_lacks_it) {
    EXPECT_FALSE(check.available);
  }
}

TEST(CheckImageTest, FindsFilesInTheCacheAndNamesTheBuildScriptOtherwise) {
  std::string dir = ::testing::TempDir() + "sbx_cache_test";
  ::mkdir(dir.c_str(), 0755);
  ::mkdir((dir + "/kernel").c_str(), 0755);
  {
    FILE* f = std::fopen((dir + "/kernel/vmlinux").c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs("x", f);
    std::fclose(f);
  }
  ::setenv("SBX_CACHE", dir.c_str(), 1);
  EXPECT_TRUE(CheckImage("kernel/vmlinux").available);
  FacilityCheck missing = CheckImage("busybox/current/rootfs.ext4");
  ::unsetenv("SBX_CACHE");
  EXPECT_FALSE(missing.available);
  EXPECT_FALSE(missing.machine_lacks_it);  // a setup step, so CI fails
  EXPECT_NE(missing.reason.find("images/busybox/build"), std::string::npos);
}

}  // namespace
}  // namespace sbx::testing
