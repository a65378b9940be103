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

TEST(GuestParamsTest, RefusesBadValues) {
  EXPECT_FALSE(ParseGuestParams("sbx.upper=vdb").ok());
  EXPECT_FALSE(ParseGuestParams("sbx.upper=/dev/../etc/passwd").ok());
  EXPECT_FALSE(ParseGuestParams("sbx.port=0").ok());
  EXPECT_FALSE(ParseGuestParams("sbx.port=http").ok());
  EXPECT_FALSE(ParseGuestParams("sbx.typo=1").ok());
}

}  // namespace
}  // namespace sbx::agent
