#include "vmm/devices/i8042.h"

#include "gtest/gtest.h"

namespace sbx::vmm {
namespace {

class I8042Test : public ::testing::Test {
 protected:
  I8042Test() : dev_([this] { ++resets_; }) {}
  uint8_t In(uint64_t port) {
    uint8_t v = 0;
    dev_.Read(port, std::span(&v, 1));
    return v;
  }
  void Out(uint64_t port, uint8_t v) { dev_.Write(port, std::span(&v, 1)); }
  int resets_ = 0;
  I8042 dev_;
};

TEST_F(I8042Test, PulseResetLineResetsTheMachine) {
  Out(4, 0xfe);
  EXPECT_EQ(resets_, 1);
}

TEST_F(I8042Test, OutputPortWithResetBitLowResets) {
  Out(4, 0xd1);
  Out(0, 0xfe);  // bit 0 low
  EXPECT_EQ(resets_, 1);
  Out(4, 0xd1);
  Out(0, 0x01);
  EXPECT_EQ(resets_, 1);
}

TEST_F(I8042Test, AnswersTheLinuxDriverProbe) {
  EXPECT_NE(In(4), 0xff);  // present
  Out(4, 0xaa);
  EXPECT_EQ(In(4) & 1, 1);  // output full
  EXPECT_EQ(In(0), 0x55);   // self-test passed
  EXPECT_EQ(In(4) & 1, 0);
  Out(4, 0x60);
  Out(0, 0x21);
  Out(4, 0x20);
  EXPECT_EQ(In(0), 0x21);  // command byte round trip
  EXPECT_EQ(resets_, 0);
}

TEST_F(I8042Test, HostileCommandFloodDoesNotGrowWithoutBound) {
  for (int i = 0; i < 100000; ++i) Out(4, 0xaa);
  int n = 0;
  while (In(4) & 1) {
    In(0);
    ++n;
  }
  EXPECT_LE(n, 17);
  EXPECT_EQ(resets_, 0);
}

}  // namespace
}  // namespace sbx::vmm
