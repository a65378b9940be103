#ifndef SBX_BASE_TEST_FACILITY_H_
#define SBX_BASE_TEST_FACILITY_H_

#include <string>

#include "gtest/gtest.h"

// Tests that need something beyond a compiler (a usable /dev/kvm, a built
// guest image) start with SBX_REQUIRE(CheckKvm()) or similar. Where the
// facility is missing the test skips and says why; under CI=true it fails
// instead, because CI is expected to provide everything the project's own
// scripts provide. The one exception is a facility the machine itself
// cannot have (a kernel that registered no KVM device at all): no script of
// ours can fix that, so CI skips too, and says so in the reason.

namespace sbx::testing {

struct FacilityCheck {
  bool available = false;
  // True when the machine cannot offer the facility at all (as opposed to a
  // setup step that was not run, or a permission that is missing).
  bool machine_lacks_it = false;
  // Why the facility is unavailable, for a person to act on.
  std::string reason;
};

enum class Verdict { kRun, kSkip, kFail };

// What a test does with `check`, given whether it runs under CI.
Verdict Decide(const FacilityCheck& check, bool in_ci);

// True when the environment variable CI is "true" (as .ci/run sets it).
bool InCi();

// Can this process open /dev/kvm read-write and create a VM?
FacilityCheck CheckKvm();

// The whole content of the file at `path` ("" if it cannot be read): for
// tests that check a console log or an output file.
std::string ReadFileToString(const std::string& path);

// The image cache scripts/setup fills: $SBX_CACHE, default /var/cache/sbx.
std::string ImageCacheDir();

// Is `relative` (e.g. "kernel/current/vmlinux") in the image cache? If not,
// the reason says which images/NAME/build makes it.
FacilityCheck CheckImage(const std::string& relative);

}  // namespace sbx::testing

#define SBX_REQUIRE(check_expr)                                             \
  do {                                                                      \
    const ::sbx::testing::FacilityCheck sbx_check_ = (check_expr);          \
    switch (::sbx::testing::Decide(sbx_check_, ::sbx::testing::InCi())) {   \
      case ::sbx::testing::Verdict::kRun:                                   \
        break;                                                              \
      case ::sbx::testing::Verdict::kSkip:                                  \
        GTEST_SKIP() << sbx_check_.reason;                                  \
      case ::sbx::testing::Verdict::kFail:                                  \
        FAIL() << "CI=true, and this test's facility is missing: "          \
               << sbx_check_.reason;                                        \
    }                                                                       \
  } while (0)

#endif  // SBX_BASE_TEST_FACILITY_H_
