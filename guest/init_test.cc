#include "guest/init.h"

#include "gtest/gtest.h"

namespace sbx::agent {
namespace {

TEST(GuestParamsTest, DefaultsWithoutSbxParameters) {
  absl::StatusOr<GuestParams> params =
      ParseGuestParams("console=ttyS0 root=/dev/vda ro quiet\n");
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_EQ(params->upper_device, "");
  EXPECT_EQ(params->port, kDefaultPort);
}

TEST(GuestParamsTest, ReadsUpperAndPort) {
  absl::StatusOr<GuestParams> params =
      ParseGuestParams("root=/dev/vda sbx.upper=/dev/vdb sbx.port=5000");
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_EQ(params->upper_device, "/dev/vdb");
  EXPECT_EQ(params->port, 5000u);
}

TEST(GuestParamsTest, ReadsLateUpper) {
  absl::StatusOr<GuestParams> params =
      ParseGuestParams("root=/dev/vda sbx.upper=late");
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_TRUE(params->upper_late);
  EXPECT_EQ(params->upper_device, "");
  // The last one wins, as the kernel's own parameters do.
  params = ParseGuestParams("sbx.upper=late sbx.upper=/dev/vdc");
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_FALSE(params->upper_late);
  EXPECT_EQ(params->upper_device, "/dev/vdc");
  EXPECT_FALSE(ParseGuestParams("sbx.upper=Late").ok());
  EXPECT_FALSE(ParseGuestParams("root=/dev/vda").value().upper_late);
}

TEST(DiskDeviceTest, OnlyVirtioDisks) {
  EXPECT_TRUE(CheckDiskDevice("/dev/vdb").ok());
  EXPECT_TRUE(CheckDiskDevice("/dev/vdz").ok());
  for (const char* bad : {"", "/dev/vd", "/dev/vdb1", "/dev/sda", "/dev/vdB",
                          "/dev/vd/", "/etc/passw", "/dev//vdb"}) {
    absl::Status status = CheckDiskDevice(bad);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(AttachUpperDiskTest, RefusesABadDeviceBeforeTouchingAnything) {
  // Checked first: nothing is mounted, no program runs.
  int runs = 0;
  ProgramRunner run = [&](const std::vector<std::string>&)
      -> absl::StatusOr<ProgramResult> {
    ++runs;
    return ProgramResult();
  };
  EXPECT_EQ(AttachUpperDisk("/dev/sda", run).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(runs, 0);
}

TEST(RunProgramAtBootTest, CollectsOutputAndExit) {
  absl::StatusOr<ProgramResult> result =
      RunProgramAtBoot({"/bin/sh", "-c", "echo out; echo err >&2; exit 3"});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_FALSE(result->signaled);
  EXPECT_EQ(result->code, 3);
  EXPECT_EQ(result->output, "out\nerr\n");
  result = RunProgramAtBoot({"/bin/sh", "-c", "kill -9 $$"});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->signaled);
  EXPECT_EQ(result->code, 9);
  result = RunProgramAtBoot({"/nonexistent/program"});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->code, 127);
}

TEST(GuestParamsTest, RefusesBadValues) {
  EXPECT_FALSE(ParseGuestParams("sbx.upper=vdb").ok());
  EXPECT_FALSE(ParseGuestParams("sbx.upper=/dev/../etc/passwd").ok());
  EXPECT_FALSE(ParseGuestParams("sbx.port=0").ok());
  EXPECT_FALSE(ParseGuestParams("sbx.port=http").ok());
  EXPECT_FALSE(ParseGuestParams("sbx.typo=1").ok());
}

}  // namespace
}  // namespace sbx::agent
