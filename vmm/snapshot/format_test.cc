#include "vmm/snapshot/format.h"

#include <unistd.h>

#include <fstream>
#include <string>

#include "base/test_facility.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "vmm/snapshot/crc32c.h"

namespace sbx::vmm::snapshot {
namespace {

using ::testing::HasSubstr;

std::span<const uint8_t> Bytes(const std::string& s) {
  return std::span(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

TEST(Crc32cTest, MatchesTheStandardCheckValues) {
  // RFC 3720 §B.4 and the usual "123456789" check value.
  EXPECT_EQ(Crc32c(Bytes("123456789")), 0xe3069283u);
  EXPECT_EQ(Crc32c(Bytes(std::string(32, '\0'))), 0x8a9136aau);
  EXPECT_EQ(Crc32c(Bytes(std::string(32, '\xff'))), 0x62a8ab43u);
  // Incremental equals one pass.
  EXPECT_EQ(Crc32c(Bytes("6789"), Crc32c(Bytes("12345"))),
            Crc32c(Bytes("123456789")));
}

TEST(FrameTest, RoundTripsAPayload) {
  std::string payload = "some protobuf bytes \x01\x02\x03";
  std::vector<uint8_t> file = EncodeFrame(Bytes(payload));
  EXPECT_EQ(file.size(), kHeaderBytes + payload.size() + kTrailerBytes);
  absl::StatusOr<std::vector<uint8_t>> back = DecodeFrame(file);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(std::string(back->begin(), back->end()), payload);
}

TEST(FrameTest, RoundTripsAnEmptyPayload) {
  std::vector<uint8_t> file = EncodeFrame({});
  absl::StatusOr<std::vector<uint8_t>> back = DecodeFrame(file);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->empty());
}

class FrameCorruptionTest : public ::testing::Test {
 protected:
  std::vector<uint8_t> Good() { return EncodeFrame(Bytes("0123456789abcdef")); }
};

TEST_F(FrameCorruptionTest, WrongMagicIsRefused) {
  std::vector<uint8_t> file = Good();
  file[0] = 'X';
  absl::StatusOr<std::vector<uint8_t>> r = DecodeFrame(file);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("not an sbx vmstate file"));
  EXPECT_FALSE(DecodeFrame({}).ok());
}

TEST_F(FrameCorruptionTest, UnknownMajorVersionIsRefused) {
  std::vector<uint8_t> file = Good();
  file[8] = kFormatMajor + 1;
  absl::StatusOr<std::vector<uint8_t>> r = DecodeFrame(file);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("version 2.0 is not supported"));
}

TEST_F(FrameCorruptionTest, NewerMinorVersionIsRead) {
  std::vector<uint8_t> file = Good();
  file[10] = 7;
  // The CRC covers the header: recompute it as a newer writer would.
  uint32_t crc = Crc32c(std::span(file).first(file.size() - 4));
  for (int i = 0; i < 4; ++i) file[file.size() - 4 + i] = static_cast<uint8_t>(crc >> (8 * i));
  EXPECT_TRUE(DecodeFrame(file).ok());
}

TEST_F(FrameCorruptionTest, BadCrcIsRefused) {
  for (size_t at : {kHeaderBytes, kHeaderBytes + 7}) {
    std::vector<uint8_t> file = Good();
    file[at] ^= 0x40;
    absl::StatusOr<std::vector<uint8_t>> r = DecodeFrame(file);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << at;
    EXPECT_THAT(r.status().message(), HasSubstr("CRC mismatch")) << at;
  }
  std::vector<uint8_t> file = Good();
  file.back() ^= 1;
  EXPECT_THAT(DecodeFrame(file).status().message(), HasSubstr("CRC mismatch"));
}

TEST_F(FrameCorruptionTest, TruncatedOrOverlongFilesAreRefused) {
  std::vector<uint8_t> file = Good();
  for (size_t keep : {file.size() - 1, kHeaderBytes + 3, kHeaderBytes}) {
    absl::StatusOr<std::vector<uint8_t>> r =
        DecodeFrame(std::span(file).first(keep));
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << keep;
    EXPECT_THAT(r.status().message(), HasSubstr("truncated")) << keep;
  }
  file.push_back(0);
  EXPECT_THAT(DecodeFrame(file).status().message(), HasSubstr("trailing garbage"));
}

TEST_F(FrameCorruptionTest, OversizedLengthIsRefusedBeforeAllocating) {
  std::vector<uint8_t> file = Good();
  // Length field = kMaxPayloadBytes + 1.
  uint32_t huge = kMaxPayloadBytes + 1;
  for (int i = 0; i < 4; ++i) file[12 + i] = static_cast<uint8_t>(huge >> (8 * i));
  absl::StatusOr<std::vector<uint8_t>> r = DecodeFrame(file);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(r.status().message(), HasSubstr("over the limit"));
}

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + name + "_" + std::to_string(::getpid());
}

TEST(VmStateFileTest, WritesAndReadsAVmState) {
  sbx::vmstate::v1::VmState state;
  state.mutable_config()->set_memory_mib(64);
  state.mutable_config()->set_cpus(2);
  state.set_cmdline("console=ttyS0");
  auto* vcpu = state.add_vcpus();
  vcpu->mutable_regs()->set_rip(0x100000);
  vcpu->set_lapic(std::string(1024, '\x5a'));
  const std::string path = TempPath("vmstate");
  ASSERT_TRUE(WriteVmState(path, state).ok());
  EXPECT_NE(::access((path + ".tmp").c_str(), F_OK), 0);  // renamed away
  absl::StatusOr<sbx::vmstate::v1::VmState> back = ReadVmState(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->SerializeAsString(), state.SerializeAsString());
  ::unlink(path.c_str());
}

TEST(VmStateFileTest, ErrorsNameTheFile) {
  const std::string path = TempPath("vmstate_bad");
  std::ofstream(path) << "definitely not a snapshot";
  absl::StatusOr<sbx::vmstate::v1::VmState> r = ReadVmState(path);
  EXPECT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr(path));
  EXPECT_THAT(r.status().message(), HasSubstr("magic"));
  ::unlink(path.c_str());
  EXPECT_EQ(ReadVmState(path).status().code(), absl::StatusCode::kNotFound);
}

TEST(VmStateFileTest, AFileOverTheCapIsRefused) {
  const std::string path = TempPath("vmstate_huge");
  {
    std::ofstream out(path, std::ios::binary);
    out.write(kMagic, 8);
  }
  ASSERT_EQ(::truncate(path.c_str(), kMaxPayloadBytes + 64), 0);
  absl::StatusOr<sbx::vmstate::v1::VmState> r = ReadVmState(path);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(r.status().message(), HasSubstr("over the vmstate limit"));
  ::unlink(path.c_str());
}

TEST(VmStateFileTest, AValidFrameWithGarbagePayloadIsRefused) {
  const std::string path = TempPath("vmstate_garbage");
  std::vector<uint8_t> file = EncodeFrame(Bytes("\xff\xff\xff\xff\xff"));
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(file.data()), file.size());
  EXPECT_THAT(ReadVmState(path).status().message(), HasSubstr("not a valid VmState"));
  ::unlink(path.c_str());
}

}  // namespace
}  // namespace sbx::vmm::snapshot
