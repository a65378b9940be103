#include "vmm/virtio/blk/block.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "vmm/virtio/mmio_transport.h"
#include "vmm/virtio/testing/fake_driver.h"

namespace sbx::vmm::virtio {
namespace {

using testing::FakeVirtqueue;
using testing::MmioDriver;

constexpr uint64_t kRamBytes = 4 << 20;
constexpr uint64_t kDiskSectors = 64;
constexpr GuestAddress kHeader = 0x10000;
constexpr GuestAddress kBuffer = 0x20000;
constexpr GuestAddress kReadBack = 0x40000;
constexpr GuestAddress kStatusByte = 0x60000;

// §5.2.3, §5.2.6.
constexpr uint64_t kFeatureSegMax = uint64_t{1} << 2;
constexpr uint64_t kFeatureRo = uint64_t{1} << 5;
constexpr uint64_t kFeatureFlush = uint64_t{1} << 9;
constexpr uint32_t kTypeIn = 0;
constexpr uint32_t kTypeOut = 1;
constexpr uint32_t kTypeFlush = 4;
constexpr uint32_t kTypeGetId = 8;
constexpr uint32_t kTypeDiscard = 11;
constexpr uint8_t kStatusOk = 0;
constexpr uint8_t kStatusIoErr = 1;
constexpr uint8_t kStatusUnsupp = 2;

std::vector<uint8_t> Pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 7);
  return v;
}

class BlockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto mem = GuestMemory::Create(kRamBytes);
    ASSERT_TRUE(mem.ok()) << mem.status();
    mem_ = *std::move(mem);
    path_ = ::testing::TempDir() + "sbx_block_test_XXXXXX";
    int fd = ::mkstemp(path_.data());
    ASSERT_GE(fd, 0) << std::strerror(errno);
    file_ = UniqueFd(fd);
    // The disk starts with a known pattern in every sector.
    disk_ = Pattern(kDiskSectors * 512, 0x11);
    ASSERT_EQ(::pwrite(fd, disk_.data(), disk_.size(), 0),
              static_cast<ssize_t>(disk_.size()));
  }
  void TearDown() override {
    if (block_ != nullptr) block_->Reset();
    ::unlink(path_.c_str());
  }

  // Opens the disk as a Block device and activates it on a fresh queue.
  void Open(bool read_only, std::string serial = "") {
    UniqueFd fd(::open(path_.c_str(), read_only ? O_RDONLY : O_RDWR));
    ASSERT_TRUE(fd.valid());
    auto block = Block::Create(std::move(fd), {.read_only = read_only,
                                               .serial = std::move(serial)});
    ASSERT_TRUE(block.ok()) << block.status();
    block_ = *std::move(block);
    auto irq = EventFd::Create();
    ASSERT_TRUE(irq.ok());
    interrupt_.emplace(*std::move(irq));
    vq_.emplace(*mem_, 0x1000, Block::kQueueSize);
    queue_.Reset();
    vq_->Configure(queue_);
    ASSERT_TRUE(block_->Activate(*mem_, kFeatureVersion1,
                                 std::span(&queue_, 1), *interrupt_)
                    .ok());
  }

  void WriteHeader(uint32_t type, uint64_t sector) {
    std::array<uint8_t, 16> header{};
    std::memcpy(&header[0], &type, 4);
    std::memcpy(&header[8], &sector, 8);
    ASSERT_TRUE(mem_->Write(kHeader, header).ok());
    ASSERT_TRUE(mem_->WriteObj<uint8_t>(kStatusByte, 0xff).ok());
  }

  // Posts the chain, kicks the device, and returns the status byte (and
  // the used length through *used_len).
  uint8_t Submit(std::initializer_list<FakeVirtqueue::Buffer> chain,
                 uint32_t* used_len = nullptr) {
    uint16_t used_before = vq_->UsedIdx();
    uint16_t head = vq_->Post(chain);
    block_->ProcessQueue(0);
    EXPECT_EQ(vq_->UsedIdx(), used_before + 1);
    EXPECT_EQ(vq_->Used(used_before).id, head);
    if (used_len != nullptr) *used_len = vq_->Used(used_before).len;
    return *mem_->ReadObj<uint8_t>(kStatusByte);
  }

  uint8_t Write(uint64_t sector, const std::vector<uint8_t>& data) {
    EXPECT_TRUE(mem_->Write(kBuffer, data).ok());
    WriteHeader(kTypeOut, sector);
    return Submit({{kHeader, 16, false},
                   {kBuffer, static_cast<uint32_t>(data.size()), false},
                   {kStatusByte, 1, true}});
  }

  uint8_t Read(uint64_t sector, size_t len, std::vector<uint8_t>* out) {
    WriteHeader(kTypeIn, sector);
    uint32_t used_len = 0;
    uint8_t status = Submit({{kHeader, 16, false},
                             {kReadBack, static_cast<uint32_t>(len), true},
                             {kStatusByte, 1, true}},
                            &used_len);
    if (status == kStatusOk) {
      EXPECT_EQ(used_len, len + 1);
    }
    out->resize(len);
    EXPECT_TRUE(mem_->Read(kReadBack, *out).ok());
    return status;
  }

  std::vector<uint8_t> FileBytes(uint64_t offset, size_t len) {
    std::vector<uint8_t> v(len);
    EXPECT_EQ(::pread(file_.get(), v.data(), len, static_cast<off_t>(offset)),
              static_cast<ssize_t>(len));
    return v;
  }

  std::unique_ptr<GuestMemory> mem_;
  std::string path_;
  UniqueFd file_;
  std::vector<uint8_t> disk_;
  std::unique_ptr<Block> block_;
  std::optional<Interrupt> interrupt_;
  std::optional<FakeVirtqueue> vq_;
  Queue queue_{Block::kQueueSize};
};

TEST_F(BlockTest, CapacityFeaturesAndConfigSpace) {
  // A partial trailing sector is not part of the disk.
  ASSERT_EQ(::ftruncate(file_.get(), kDiskSectors * 512 + 100), 0);
  Open(/*read_only=*/false);
  EXPECT_EQ(block_->capacity_sectors(), kDiskSectors);
  EXPECT_EQ(block_->device_type(), 2u);
  EXPECT_EQ(block_->device_features(), kFeatureSegMax | kFeatureFlush);
  std::array<uint8_t, 4> low, high, seg_max;
  block_->ReadConfig(0, low);
  block_->ReadConfig(4, high);
  block_->ReadConfig(12, seg_max);
  uint32_t v;
  std::memcpy(&v, low.data(), 4);
  EXPECT_EQ(v, kDiskSectors);
  std::memcpy(&v, high.data(), 4);
  EXPECT_EQ(v, 0u);
  std::memcpy(&v, seg_max.data(), 4);
  EXPECT_EQ(v, Block::kQueueSize - 2u);
}

TEST_F(BlockTest, WrittenSectorsReachTheFileAndReadBack) {
  Open(/*read_only=*/false);
  std::vector<uint8_t> data = Pattern(2 * 512, 0x80);
  EXPECT_EQ(Write(3, data), kStatusOk);
  EXPECT_EQ(FileBytes(3 * 512, data.size()), data);
  // Neighbours untouched.
  EXPECT_EQ(FileBytes(2 * 512, 512),
            std::vector<uint8_t>(disk_.begin() + 2 * 512,
                                 disk_.begin() + 3 * 512));
  EXPECT_EQ(FileBytes(5 * 512, 512),
            std::vector<uint8_t>(disk_.begin() + 5 * 512,
                                 disk_.begin() + 6 * 512));

  std::vector<uint8_t> back;
  EXPECT_EQ(Read(3, data.size(), &back), kStatusOk);
  EXPECT_EQ(back, data);
  // And the last sector of the disk, untouched.
  EXPECT_EQ(Read(kDiskSectors - 1, 512, &back), kStatusOk);
  EXPECT_EQ(back, std::vector<uint8_t>(disk_.end() - 512, disk_.end()));
}

TEST_F(BlockTest, RequestsMayBeFramedAnyWay) {
  Open(/*read_only=*/false);
  // §2.7.4: header split over two buffers, data over three, and the
  // status byte at the end of the last data buffer.
  std::array<uint8_t, 16> header{};
  uint32_t type = kTypeIn;
  uint64_t sector = 10;
  std::memcpy(&header[0], &type, 4);
  std::memcpy(&header[8], &sector, 8);
  ASSERT_TRUE(mem_->Write(kHeader, std::span(header).first(6)).ok());
  ASSERT_TRUE(mem_->Write(kHeader + 0x100, std::span(header).subspan(6)).ok());
  uint32_t used_len = 0;
  uint16_t used_before = vq_->UsedIdx();
  vq_->Post({{kHeader, 6, false},
             {kHeader + 0x100, 10, false},
             {kReadBack, 300, true},
             {kReadBack + 0x1000, 1000, true},
             {kReadBack + 0x2000, 237, true}});  // 212 data + status
  block_->ProcessQueue(0);
  ASSERT_EQ(vq_->UsedIdx(), used_before + 1);
  used_len = vq_->Used(used_before).len;
  EXPECT_EQ(used_len, 3 * 512 + 1u);
  EXPECT_EQ(*mem_->ReadObj<uint8_t>(kReadBack + 0x2000 + 236), kStatusOk);

  std::vector<uint8_t> got(3 * 512);
  ASSERT_TRUE(mem_->Read(kReadBack, std::span(got).first(300)).ok());
  ASSERT_TRUE(
      mem_->Read(kReadBack + 0x1000, std::span(got).subspan(300, 1000)).ok());
  ASSERT_TRUE(
      mem_->Read(kReadBack + 0x2000, std::span(got).subspan(1300)).ok());
  EXPECT_EQ(got, std::vector<uint8_t>(disk_.begin() + 10 * 512,
                                      disk_.begin() + 13 * 512));
}

TEST_F(BlockTest, ReadOnlyDiskRefusesWritesAndKeepsTheFile) {
  Open(/*read_only=*/true);
  EXPECT_NE(block_->device_features() & kFeatureRo, 0u);
  EXPECT_EQ(Write(0, Pattern(512, 0x55)), kStatusIoErr);
  EXPECT_EQ(FileBytes(0, disk_.size()), disk_);
  std::vector<uint8_t> back;
  EXPECT_EQ(Read(0, 512, &back), kStatusOk);
  EXPECT_EQ(back, std::vector<uint8_t>(disk_.begin(), disk_.begin() + 512));
}

TEST_F(BlockTest, OutOfRangeRequestsFailWithIoErr) {
  Open(/*read_only=*/false);
  std::vector<uint8_t> back;
  // Runs one sector past the end.
  EXPECT_EQ(Read(kDiskSectors - 1, 1024, &back), kStatusIoErr);
  EXPECT_EQ(Write(kDiskSectors - 1, Pattern(1024, 1)), kStatusIoErr);
  EXPECT_EQ(Write(kDiskSectors, Pattern(512, 1)), kStatusIoErr);
  // sector * 512 and sector + count would overflow.
  EXPECT_EQ(Read(~uint64_t{0}, 512, &back), kStatusIoErr);
  EXPECT_EQ(Write(uint64_t{1} << 55, Pattern(512, 1)), kStatusIoErr);
  // Not a whole number of sectors.
  EXPECT_EQ(Write(0, Pattern(100, 1)), kStatusIoErr);
  EXPECT_EQ(FileBytes(0, disk_.size()), disk_);
}

TEST_F(BlockTest, FlushSucceeds) {
  Open(/*read_only=*/false);
  WriteHeader(kTypeFlush, 0);
  uint32_t used_len = 0;
  EXPECT_EQ(Submit({{kHeader, 16, false}, {kStatusByte, 1, true}}, &used_len),
            kStatusOk);
  EXPECT_EQ(used_len, 1u);
}

TEST_F(BlockTest, GetIdReturnsTheNulPaddedSerial) {
  Open(/*read_only=*/false, "sbx-disk-7");
  ASSERT_TRUE(mem_->Write(kBuffer, Pattern(20, 0xee)).ok());
  WriteHeader(kTypeGetId, 0);
  uint32_t used_len = 0;
  EXPECT_EQ(Submit({{kHeader, 16, false},
                    {kBuffer, 20, true},
                    {kStatusByte, 1, true}},
                   &used_len),
            kStatusOk);
  EXPECT_EQ(used_len, 21u);
  std::array<char, 20> id;
  ASSERT_TRUE(
      mem_->Read(kBuffer, std::span(reinterpret_cast<uint8_t*>(id.data()), 20))
          .ok());
  std::array<char, 20> want{};
  std::memcpy(want.data(), "sbx-disk-7", 10);
  EXPECT_EQ(id, want);
}

TEST_F(BlockTest, UnknownRequestTypesAreUnsupported) {
  Open(/*read_only=*/false);
  WriteHeader(kTypeDiscard, 0);
  EXPECT_EQ(Submit({{kHeader, 16, false},
                    {kBuffer, 16, false},
                    {kStatusByte, 1, true}}),
            kStatusUnsupp);
  WriteHeader(0x1234, 0);
  EXPECT_EQ(Submit({{kHeader, 16, false}, {kStatusByte, 1, true}}),
            kStatusUnsupp);
  EXPECT_EQ(FileBytes(0, disk_.size()), disk_);
}

TEST_F(BlockTest, MalformedRequestsAreCompletedWithoutEffect) {
  Open(/*read_only=*/false);
  // A header shorter than 16 bytes.
  WriteHeader(kTypeOut, 0);
  EXPECT_EQ(Submit({{kHeader, 8, false}, {kStatusByte, 1, true}}),
            kStatusIoErr);
  // No writable byte for the status: handed back with length 0.
  uint32_t used_len = 99;
  WriteHeader(kTypeOut, 0);
  ASSERT_TRUE(mem_->Write(kBuffer, Pattern(512, 3)).ok());
  Submit({{kHeader, 16, false}, {kBuffer, 512, false}}, &used_len);
  EXPECT_EQ(used_len, 0u);
  EXPECT_EQ(FileBytes(0, disk_.size()), disk_);
}

TEST_F(BlockTest, CompletionsSignalTheInterrupt) {
  Open(/*read_only=*/false);
  EXPECT_EQ(*interrupt_->irq().Consume(), 0u);
  std::vector<uint8_t> back;
  EXPECT_EQ(Read(0, 512, &back), kStatusOk);
  EXPECT_GE(*interrupt_->irq().Consume(), 1u);
  EXPECT_EQ(interrupt_->status(), Interrupt::kUsedBuffer);
}

TEST_F(BlockTest, CreateRefusesASerialLongerThan20Bytes) {
  UniqueFd fd(::open(path_.c_str(), O_RDWR));
  EXPECT_EQ(Block::Create(std::move(fd), {.serial = std::string(21, 'x')})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(BlockTest, WorksThroughTheMmioTransport) {
  UniqueFd fd(::open(path_.c_str(), O_RDWR));
  auto block = Block::Create(std::move(fd), {});
  ASSERT_TRUE(block.ok());
  auto irq = EventFd::Create();
  ASSERT_TRUE(irq.ok());
  auto transport =
      MmioTransport::Create(*mem_, *std::move(block), *std::move(irq));
  ASSERT_TRUE(transport.ok());
  MmioDriver driver(**transport);
  EXPECT_EQ(driver.Read32(MmioDriver::kDeviceId), 2u);
  // capacity, read as two 32-bit halves the way Linux reads a le64.
  EXPECT_EQ(driver.Read32(MmioDriver::kConfig), kDiskSectors);
  EXPECT_EQ(driver.Read32(MmioDriver::kConfig + 4), 0u);

  ASSERT_TRUE(driver.Negotiate(kFeatureVersion1 | kFeatureFlush |
                               kFeatureSegMax | kFeatureEventIdx |
                               kFeatureIndirectDesc));
  FakeVirtqueue vq(*mem_, 0x1000, 128);
  driver.SetUpQueue(0, vq);
  driver.DriverOk();
  ASSERT_EQ(driver.Read32(MmioDriver::kStatus), 0xfu);

  std::vector<uint8_t> data = Pattern(512, 0x42);
  ASSERT_TRUE(mem_->Write(kBuffer, data).ok());
  WriteHeader(kTypeOut, 7);
  vq.Post({{kHeader, 16, false}, {kBuffer, 512, false}, {kStatusByte, 1, true}});
  driver.Write32(MmioDriver::kQueueNotify, 0);
  ASSERT_EQ(vq.UsedIdx(), 1);
  EXPECT_EQ(*mem_->ReadObj<uint8_t>(kStatusByte), kStatusOk);
  EXPECT_EQ(FileBytes(7 * 512, 512), data);
  EXPECT_GE(*(*transport)->interrupt().irq().Consume(), 1u);
  EXPECT_EQ(driver.Read32(MmioDriver::kInterruptStatus),
            Interrupt::kUsedBuffer);
}

}  // namespace
}  // namespace sbx::vmm::virtio
