#include "vmm/boot/cmdline.h"

#include "gtest/gtest.h"

namespace sbx::vmm {
namespace {

TEST(KernelCmdlineTest, JoinsParametersAndDevices) {
  KernelCmdline cmdline(2048);
  ASSERT_TRUE(cmdline.Append("  console=ttyS0 reboot=k ").ok());
  ASSERT_TRUE(cmdline.AddVirtioMmioDevice(0x1000, 0xd000'0000, 5).ok());
  ASSERT_TRUE(cmdline.AddVirtioMmioDevice(0x200, 0xd000'1000, 6).ok());
  ASSERT_TRUE(cmdline.Append("").ok());
  EXPECT_EQ(cmdline.str(),
            "console=ttyS0 reboot=k virtio_mmio.device=4K@0xd0000000:5 "
            "virtio_mmio.device=512@0xd0001000:6");
}

TEST(KernelCmdlineTest, RefusesControlCharactersAndOverflow) {
  KernelCmdline cmdline(16);
  EXPECT_FALSE(cmdline.Append("a\nb").ok());
  EXPECT_FALSE(cmdline.Append(std::string("a\0b", 3)).ok());
  ASSERT_TRUE(cmdline.Append("0123456789").ok());
  // 10 + 1 + 5 = 16 bytes would leave no room for the NUL.
  EXPECT_FALSE(cmdline.Append("abcde").ok());
  EXPECT_TRUE(cmdline.Append("abcd").ok());
  EXPECT_EQ(cmdline.str(), "0123456789 abcd");
}

}  // namespace
}  // namespace sbx::vmm
