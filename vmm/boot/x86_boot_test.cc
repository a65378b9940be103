#include "vmm/boot/x86_boot.h"

#include <asm/bootparam.h>

#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "vmm/boot/layout.h"

namespace sbx::vmm {
namespace {

constexpr uint64_t kMiB = 1 << 20;

uint8_t SumBytes(const GuestMemory& mem, GuestAddress addr, size_t len) {
  std::vector<uint8_t> bytes(len);
  EXPECT_TRUE(mem.Read(addr, bytes).ok());
  uint8_t sum = 0;
  for (uint8_t b : bytes) sum = static_cast<uint8_t>(sum + b);
  return sum;
}

std::string ReadCString(const GuestMemory& mem, GuestAddress addr) {
  std::string s;
  for (;;) {
    uint8_t c = *mem.ReadObj<uint8_t>(addr++);
    if (c == 0) return s;
    s.push_back(static_cast<char>(c));
  }
}

TEST(X86BootTest, Linux64WritesZeroPageE820AndPageTables) {
  auto mem = GuestMemory::Create(64 * kMiB);
  ASSERT_TRUE(mem.ok());
  LoadedKernel kernel{BootProtocol::kLinux64, 0x100'0000, 0x200'0000, {}};
  ASSERT_TRUE(WriteBootData(**mem, kernel, "console=ttyS0", 2).ok());

  auto params = (*mem)->ReadObj<boot_params>(layout::kZeroPage);
  ASSERT_TRUE(params.ok());
  EXPECT_EQ(params->hdr.header, 0x53726448u);
  EXPECT_EQ(params->hdr.type_of_loader, 0xff);
  EXPECT_EQ(params->hdr.cmd_line_ptr, layout::kCmdline);
  EXPECT_EQ(params->hdr.cmdline_size, 13u);
  EXPECT_TRUE(params->hdr.loadflags & LOADED_HIGH);
  EXPECT_EQ(ReadCString(**mem, layout::kCmdline), "console=ttyS0");
  // e820: low RAM, the reserved legacy area, RAM from 1 MiB to the end.
  ASSERT_EQ(params->e820_entries, 3);
  EXPECT_EQ(params->e820_table[2].addr, kHighMemoryStart);
  EXPECT_EQ(params->e820_table[2].addr + params->e820_table[2].size, 64 * kMiB);
  EXPECT_EQ(params->e820_table[1].type, 2u);

  // Identity map: PML4[0] -> PDPT, PDPT[3] -> 4th PD, that PD's last 2 MiB
  // page maps 4 GiB - 2 MiB.
  EXPECT_EQ(*(*mem)->ReadObj<uint64_t>(layout::kPml4), layout::kPdpt | 3);
  EXPECT_EQ(*(*mem)->ReadObj<uint64_t>(layout::kPdpt + 3 * 8),
            (layout::kPd + 3 * 4096) | 3);
  EXPECT_EQ(*(*mem)->ReadObj<uint64_t>(layout::kPd + 3 * 4096 + 511 * 8),
            (uint64_t{4} << 30) - (2 * kMiB) + 0x83);
}

TEST(X86BootTest, BzImageSetupHeaderIsCarriedIntoTheZeroPage) {
  auto mem = GuestMemory::Create(64 * kMiB);
  ASSERT_TRUE(mem.ok());
  setup_header hdr = {};
  hdr.version = 0x020f;
  hdr.init_size = 0x123000;
  LoadedKernel kernel{BootProtocol::kLinux64, 0x100200, 0x300000, hdr};
  ASSERT_TRUE(WriteBootData(**mem, kernel, "", 1).ok());
  auto params = (*mem)->ReadObj<boot_params>(layout::kZeroPage);
  EXPECT_EQ(params->hdr.version, 0x020f);
  EXPECT_EQ(params->hdr.init_size, 0x123000u);
  EXPECT_EQ(params->hdr.type_of_loader, 0xff);
}

TEST(X86BootTest, PvhWritesStartInfoAndMemoryMap) {
  auto mem = GuestMemory::Create(64 * kMiB);
  ASSERT_TRUE(mem.ok());
  LoadedKernel kernel{BootProtocol::kPvh, 0x100'0000, 0x200'0000, {}};
  ASSERT_TRUE(WriteBootData(**mem, kernel, "root=/dev/vda", 1).ok());
  auto info = (*mem)->ReadObj<HvmStartInfo>(layout::kPvhStartInfo);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->magic, HvmStartInfo::kMagic);
  EXPECT_EQ(info->version, 1u);
  EXPECT_EQ(ReadCString(**mem, info->cmdline_paddr), "root=/dev/vda");
  ASSERT_EQ(info->memmap_entries, 3u);
  auto last = (*mem)->ReadObj<HvmMemmapEntry>(info->memmap_paddr +
                                              2 * sizeof(HvmMemmapEntry));
  EXPECT_EQ(last->addr, kHighMemoryStart);
  EXPECT_EQ(last->type, 1u);
}

TEST(X86BootTest, MpTableIsFoundAndChecksummed) {
  auto mem = GuestMemory::Create(64 * kMiB);
  ASSERT_TRUE(mem.ok());
  ASSERT_TRUE(WriteMpTable(**mem, 4).ok());
  // Floating pointer: "_MP_", sums to zero over its 16 bytes.
  std::vector<uint8_t> fp(16);
  ASSERT_TRUE((*mem)->Read(layout::kMpTable, fp).ok());
  EXPECT_EQ(std::memcmp(fp.data(), "_MP_", 4), 0);
  EXPECT_EQ(SumBytes(**mem, layout::kMpTable, 16), 0);
  uint32_t table;
  std::memcpy(&table, fp.data() + 4, 4);
  // Config table: "PCMP", its length sums to zero, and it lists 4 CPUs
  // (the first the BSP), a bus, an IOAPIC, 24 I/O and 2 local interrupts.
  std::vector<uint8_t> hdr(44);
  ASSERT_TRUE((*mem)->Read(table, hdr).ok());
  EXPECT_EQ(std::memcmp(hdr.data(), "PCMP", 4), 0);
  uint16_t length, count;
  std::memcpy(&length, hdr.data() + 4, 2);
  std::memcpy(&count, hdr.data() + 34, 2);
  EXPECT_EQ(SumBytes(**mem, table, length), 0);
  EXPECT_EQ(count, 4 + 1 + 1 + 24 + 2);
  EXPECT_EQ(length, 44 + 4 * 20 + 28 * 8);
  uint8_t first_cpu_flags = *(*mem)->ReadObj<uint8_t>(table + 44 + 3);
  uint8_t second_cpu_flags = *(*mem)->ReadObj<uint8_t>(table + 44 + 20 + 3);
  EXPECT_EQ(first_cpu_flags, 3);   // enabled, BSP
  EXPECT_EQ(second_cpu_flags, 1);  // enabled
  // The whole table stays below 1 MiB even with 32 CPUs.
  EXPECT_TRUE(WriteMpTable(**mem, 32).ok());
}

TEST(X86BootTest, RefusesTooLongCmdlineAndTooLittleRam) {
  auto mem = GuestMemory::Create(64 * kMiB);
  ASSERT_TRUE(mem.ok());
  LoadedKernel kernel{BootProtocol::kPvh, 0x100'0000, 0x200'0000, {}};
  EXPECT_FALSE(WriteBootData(**mem, kernel, std::string(layout::kCmdlineMax, 'x'), 1).ok());
  auto small = GuestMemory::Create(8 * kMiB);
  ASSERT_TRUE(small.ok());
  EXPECT_FALSE(WriteBootData(**small, kernel, "", 1).ok());
}

}  // namespace
}  // namespace sbx::vmm
