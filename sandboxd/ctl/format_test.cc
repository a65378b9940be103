#include "sandboxd/ctl/format.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sbx::ctl {
namespace {

using ::testing::HasSubstr;

TEST(FormatTest, TableAlignsColumns) {
  EXPECT_EQ(FormatTable({{"ID", "CPUS", "LABELS"}, {"sb-1", "12", "a=b"}, {"sb-22", "2", ""}},
                        {1}),
            "ID     CPUS  LABELS\n"
            "sb-1     12  a=b\n"
            "sb-22     2\n");
}

TEST(FormatTest, Ages) {
  EXPECT_EQ(FormatAge(absl::Seconds(42)), "42s");
  EXPECT_EQ(FormatAge(absl::Minutes(5) + absl::Seconds(59)), "5m");
  EXPECT_EQ(FormatAge(absl::Hours(3)), "3h");
  EXPECT_EQ(FormatAge(absl::Hours(49)), "2d");
  EXPECT_EQ(FormatAge(-absl::Seconds(3)), "0s");  // clock skew
}

TEST(FormatTest, Sizes) {
  EXPECT_EQ(FormatMib(512), "512M");
  EXPECT_EQ(FormatMib(2048), "2G");
  EXPECT_EQ(FormatMib(1536), "1.5G");
  EXPECT_EQ(FormatBytes(812), "812 B");
  EXPECT_EQ(FormatBytes(3 << 20), "3.0 MiB");
}

TEST(FormatTest, ModesReadLikeLs) {
  EXPECT_EQ(FormatMode(sbx::v1::REGULAR, 0644), "-rw-r--r--");
  EXPECT_EQ(FormatMode(sbx::v1::DIRECTORY, 0755), "drwxr-xr-x");
  EXPECT_EQ(FormatMode(sbx::v1::SYMLINK, 0777), "lrwxrwxrwx");
  EXPECT_EQ(FormatMode(sbx::v1::DIRECTORY, 01777), "drwxrwxrwt");
  EXPECT_EQ(FormatMode(sbx::v1::REGULAR, 04755), "-rwsr-xr-x");
}

TEST(FormatTest, TimesAndLabelsAndStates) {
  google::protobuf::Timestamp t;
  t.set_seconds(1714568640);  // 2024-05-01 13:04:00 UTC
  EXPECT_EQ(FormatTime(t, absl::UTCTimeZone()), "2024-05-01 13:04");
  EXPECT_EQ(FormatTime(google::protobuf::Timestamp(), absl::UTCTimeZone()), "-");
  sbx::v1::Sandbox sb;
  sb.mutable_labels()->insert({std::string("z"), std::string("1")});
  sb.mutable_labels()->insert({std::string("a"), std::string("2")});
  EXPECT_EQ(FormatLabels(sb.labels()), "a=2,z=1");
  EXPECT_EQ(StateName(sbx::v1::SLEEPING), "sleeping");
}

TEST(FormatTest, JsonUsesProtoNamesAndEnumNames) {
  sbx::v1::Sandbox sb;
  sb.set_id("sb-0123456789abcdef");
  sb.set_state(sbx::v1::RUNNING);
  sb.set_memory_mib(512);
  std::string json = ToJson(sb);
  EXPECT_THAT(json, HasSubstr("\"id\": \"sb-0123456789abcdef\""));
  EXPECT_THAT(json, HasSubstr("\"state\": \"RUNNING\""));
  EXPECT_THAT(json, HasSubstr("\"memory_mib\": \"512\""));  // uint64: a string in proto3 JSON
  EXPECT_THAT(json, HasSubstr("\"running_execs\": 0"));      // every field present
  EXPECT_EQ(json.back(), '\n');
}

}  // namespace
}  // namespace sbx::ctl
