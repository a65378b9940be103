// The test guests are real PVH kernels as far as the loader can tell: each
// loads at 1 MiB with its Xen PVH entry note found. Runs without KVM.
#include <fstream>
#include <iterator>
#include <vector>

#include "gtest/gtest.h"
#include "vmm/boot/kernel_loader.h"
#include "vmm/testing/guests/guests.h"

namespace sbx::vmm {
namespace {

class GuestImageTest : public ::testing::TestWithParam<const char*> {};

TEST_P(GuestImageTest, LoadsThroughPvh) {
  std::ifstream in(guests::GuestPath(GetParam()), std::ios::binary);
  ASSERT_TRUE(in) << guests::GuestPath(GetParam());
  std::vector<uint8_t> image((std::istreambuf_iterator<char>(in)), {});
  auto mem = GuestMemory::Create(64 << 20);
  ASSERT_TRUE(mem.ok());
  auto kernel = LoadKernel(**mem, image);
  ASSERT_TRUE(kernel.ok()) << kernel.status();
  EXPECT_EQ(kernel->protocol, BootProtocol::kPvh);
  EXPECT_EQ(kernel->entry, 0x100000u);  // pvh_start32, first in .text
  // The entry's first instruction is `cli` (0xfa).
  EXPECT_EQ(*(*mem)->ReadObj<uint8_t>(kernel->entry), 0xfa);
  EXPECT_GT(kernel->end, kernel->entry);
}

INSTANTIATE_TEST_SUITE_P(AllGuests, GuestImageTest,
                         ::testing::Values("hello", "triple_fault", "exits", "spin",
                                           "vsock", "compute"));

}  // namespace
}  // namespace sbx::vmm
