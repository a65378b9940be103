#include "base/status.h"

#include <cerrno>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "base/status_macros.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sbx {
namespace {

using ::testing::HasSubstr;

TEST(ErrnoStatusTest, NamesTheCallAndTheError) {
  absl::Status s = ErrnoStatus("KVM_CREATE_VM", ENOMEM);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "KVM_CREATE_VM: Cannot allocate memory");
}

TEST(ErrnoStatusTest, NamesTheObject) {
  absl::Status s = ErrnoStatus("open", "/dev/kvm", EACCES);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(s.message(), "open /dev/kvm: Permission denied");
}

TEST(ErrnoStatusTest, MapsCommonErrnos) {
  EXPECT_EQ(ErrnoStatus("x", ENOENT).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ErrnoStatus("x", EINVAL).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrnoStatus("x", EEXIST).code(), absl::StatusCode::kAlreadyExists);
}

TEST(AnnotateTest, PrefixesContextAndKeepsCode) {
  absl::Status s = Annotate(ErrnoStatus("open", "/k", ENOENT), "loading kernel");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "loading kernel: open /k: No such file or directory");
  EXPECT_TRUE(Annotate(absl::OkStatus(), "anything").ok());
}

// --- SBX_RETURN_IF_ERROR / SBX_ASSIGN_OR_RETURN ---

absl::Status FailIf(bool fail, int* calls) {
  ++*calls;
  return fail ? absl::InternalError("boom") : absl::OkStatus();
}

absl::Status TwoSteps(bool fail_first, int* calls) {
  SBX_RETURN_IF_ERROR(FailIf(fail_first, calls));
  SBX_RETURN_IF_ERROR(FailIf(false, calls));
  return absl::OkStatus();
}

TEST(StatusMacrosTest, ReturnIfErrorStopsAtFirstError) {
  int calls = 0;
  absl::Status s = TwoSteps(/*fail_first=*/true, &calls);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(calls, 1);

  calls = 0;
  EXPECT_TRUE(TwoSteps(/*fail_first=*/false, &calls).ok());
  EXPECT_EQ(calls, 2);
}

absl::StatusOr<std::unique_ptr<int>> MakeInt(int v) {
  if (v < 0) return absl::InvalidArgumentError("negative");
  return std::make_unique<int>(v);
}

absl::StatusOr<int> AddOne(int v, int* evaluations) {
  ++*evaluations;
  SBX_ASSIGN_OR_RETURN(std::unique_ptr<int> p, MakeInt(v));  // move-only
  int result;
  SBX_ASSIGN_OR_RETURN(result, absl::StatusOr<int>(*p + 1));
  return result;
}

TEST(StatusMacrosTest, AssignOrReturnMovesValueOrPropagates) {
  int evaluations = 0;
  absl::StatusOr<int> ok = AddOne(41, &evaluations);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 42);

  absl::StatusOr<int> bad = AddOne(-1, &evaluations);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("negative"));
  EXPECT_EQ(evaluations, 2);
}

}  // namespace
}  // namespace sbx
