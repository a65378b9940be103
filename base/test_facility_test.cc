#include "base/test_facility.h"

#include <sys/stat.h>

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

}  // namespace
}  // namespace sbx::testing
