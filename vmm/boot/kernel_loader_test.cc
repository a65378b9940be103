#include "vmm/boot/kernel_loader.h"

#include <elf.h>

#include <cstring>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sbx::vmm {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMiB = 1 << 20;

// Builds a minimal x86-64 ELF: one PT_LOAD of `payload` at `paddr` with
// `memsz` bytes in memory, and optionally a Xen PVH entry note.
class ElfBuilder {
 public:
  ElfBuilder& Load(uint64_t paddr, std::vector<uint8_t> payload, uint64_t memsz) {
    loads_.push_back({paddr, std::move(payload), memsz});
    return *this;
  }
  ElfBuilder& PvhNote(uint32_t entry) {
    pvh_ = entry;
    return *this;
  }
  ElfBuilder& Entry(uint64_t e) {
    entry_ = e;
    return *this;
  }
  std::vector<uint8_t> Build() const {
    size_t nph = loads_.size() + (pvh_ ? 1 : 0);
    size_t data_at = sizeof(Elf64_Ehdr) + nph * sizeof(Elf64_Phdr);
    std::vector<uint8_t> out(data_at);
    Elf64_Ehdr eh = {};
    std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
    eh.e_ident[EI_CLASS] = ELFCLASS64;
    eh.e_ident[EI_DATA] = ELFDATA2LSB;
    eh.e_ident[EI_VERSION] = EV_CURRENT;
    eh.e_type = ET_EXEC;
    eh.e_machine = EM_X86_64;
    eh.e_entry = entry_;
    eh.e_phoff = sizeof(Elf64_Ehdr);
    eh.e_ehsize = sizeof(Elf64_Ehdr);
    eh.e_phentsize = sizeof(Elf64_Phdr);
    eh.e_phnum = static_cast<uint16_t>(nph);
    std::memcpy(out.data(), &eh, sizeof(eh));
    size_t ph_at = sizeof(Elf64_Ehdr);
    for (const auto& l : loads_) {
      Elf64_Phdr ph = {};
      ph.p_type = PT_LOAD;
      ph.p_offset = out.size();
      ph.p_paddr = ph.p_vaddr = l.paddr;
      ph.p_filesz = l.payload.size();
      ph.p_memsz = l.memsz;
      std::memcpy(out.data() + ph_at, &ph, sizeof(ph));
      ph_at += sizeof(ph);
      out.insert(out.end(), l.payload.begin(), l.payload.end());
    }
    if (pvh_) {
      Elf64_Phdr ph = {};
      ph.p_type = PT_NOTE;
      ph.p_offset = out.size();
      Elf64_Nhdr nh = {4, 4, 18};
      std::vector<uint8_t> note(sizeof(nh) + 4 + 4);
      std::memcpy(note.data(), &nh, sizeof(nh));
      std::memcpy(note.data() + sizeof(nh), "Xen", 4);
      std::memcpy(note.data() + sizeof(nh) + 4, &*pvh_, 4);
      ph.p_filesz = note.size();
      std::memcpy(out.data() + ph_at, &ph, sizeof(ph));
      out.insert(out.end(), note.begin(), note.end());
    }
    return out;
  }

 private:
  struct LoadSeg {
    uint64_t paddr;
    std::vector<uint8_t> payload;
    uint64_t memsz;
  };
  std::vector<LoadSeg> loads_;
  std::optional<uint32_t> pvh_;
  uint64_t entry_ = 0x100'0000;
};

std::unique_ptr<GuestMemory> Ram(uint64_t bytes = 32 * kMiB) {
  auto mem = GuestMemory::Create(bytes);
  EXPECT_TRUE(mem.ok());
  return std::move(*mem);
}

TEST(KernelLoaderTest, LoadsElfSegmentsAndZeroesBss) {
  auto mem = Ram();
  // Dirty the bss area first to prove the loader zeroes it.
  std::vector<uint8_t> junk(16, 0xee);
  ASSERT_TRUE(mem->Write(0x100'0000 + 4, junk).ok());
  std::vector<uint8_t> image =
      ElfBuilder().Load(0x100'0000, {1, 2, 3, 4}, 20).Build();
  auto k = LoadKernel(*mem, image);
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_EQ(k->protocol, BootProtocol::kLinux64);
  EXPECT_EQ(k->entry, 0x100'0000u);
  EXPECT_EQ(k->end, 0x100'0000u + 20);
  EXPECT_FALSE(k->setup.has_value());
  std::vector<uint8_t> got(20);
  ASSERT_TRUE(mem->Read(0x100'0000, got).ok());
  std::vector<uint8_t> want(20, 0);
  want[0] = 1, want[1] = 2, want[2] = 3, want[3] = 4;
  EXPECT_EQ(got, want);
}

TEST(KernelLoaderTest, PrefersThePvhEntryWhenPresent) {
  auto mem = Ram();
  std::vector<uint8_t> image =
      ElfBuilder().Load(0x100'0000, {0x90}, 1).PvhNote(0x100'0000).Build();
  auto k = LoadKernel(*mem, image);
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_EQ(k->protocol, BootProtocol::kPvh);
  EXPECT_EQ(k->entry, 0x100'0000u);

  auto linux64 = LoadKernel(*mem, image, BootPreference::kLinux64);
  ASSERT_TRUE(linux64.ok());
  EXPECT_EQ(linux64->protocol, BootProtocol::kLinux64);
}

TEST(KernelLoaderTest, PvhAskedForWithoutNoteIsAnError) {
  auto mem = Ram();
  std::vector<uint8_t> image = ElfBuilder().Load(0x100'0000, {0x90}, 1).Build();
  auto k = LoadKernel(*mem, image, BootPreference::kPvh);
  ASSERT_FALSE(k.ok());
  EXPECT_THAT(std::string(k.status().message()), HasSubstr("CONFIG_PVH"));
}

TEST(KernelLoaderTest, RefusesSegmentsBelowOneMiB) {
  auto mem = Ram();
  std::vector<uint8_t> image = ElfBuilder().Load(0x7000, {1}, 1).Entry(0x7000).Build();
  auto k = LoadKernel(*mem, image);
  ASSERT_FALSE(k.ok());
  EXPECT_THAT(std::string(k.status().message()), HasSubstr("below 1 MiB"));
}

TEST(KernelLoaderTest, KernelLargerThanRamSaysGiveMoreMemory) {
  auto mem = Ram(16 * kMiB);
  std::vector<uint8_t> image =
      ElfBuilder().Load(0x100'0000, {1}, 64 * kMiB).Build();
  auto k = LoadKernel(*mem, image);
  ASSERT_FALSE(k.ok());
  EXPECT_THAT(std::string(k.status().message()), HasSubstr("more memory"));
}

TEST(KernelLoaderTest, RefusesHostileHeaders) {
  auto mem = Ram();
  std::vector<uint8_t> good = ElfBuilder().Load(0x100'0000, {1, 2}, 2).Build();

  // Truncated file: the segment's bytes are cut off.
  std::vector<uint8_t> truncated(good.begin(), good.end() - 1);
  EXPECT_FALSE(LoadKernel(*mem, truncated).ok());

  // Program header table offset far beyond the file.
  std::vector<uint8_t> bad_phoff = good;
  uint64_t huge = ~uint64_t{0} - 8;
  std::memcpy(bad_phoff.data() + offsetof(Elf64_Ehdr, e_phoff), &huge, 8);
  EXPECT_FALSE(LoadKernel(*mem, bad_phoff).ok());

  // Segment offset that wraps when the size is added.
  std::vector<uint8_t> bad_off = good;
  size_t ph = sizeof(Elf64_Ehdr);
  std::memcpy(bad_off.data() + ph + offsetof(Elf64_Phdr, p_offset), &huge, 8);
  EXPECT_FALSE(LoadKernel(*mem, bad_off).ok());

  // p_filesz > p_memsz.
  std::vector<uint8_t> bad_sizes = good;
  uint64_t one = 1;
  std::memcpy(bad_sizes.data() + ph + offsetof(Elf64_Phdr, p_memsz), &one, 8);
  EXPECT_FALSE(LoadKernel(*mem, bad_sizes).ok());

  // 32-bit ELF.
  std::vector<uint8_t> elf32 = good;
  elf32[EI_CLASS] = ELFCLASS32;
  EXPECT_THAT(std::string(LoadKernel(*mem, elf32).status().message()),
              HasSubstr("x86-64"));

  // Entry point outside RAM.
  std::vector<uint8_t> bad_entry =
      ElfBuilder().Load(0x100'0000, {1}, 1).Entry(0xffff'0000'0000).Build();
  EXPECT_FALSE(LoadKernel(*mem, bad_entry).ok());

  // Not a kernel at all, and an empty file.
  std::vector<uint8_t> text(4096, 'a');
  EXPECT_THAT(std::string(LoadKernel(*mem, text).status().message()),
              HasSubstr("not a usable x86-64 kernel"));
  EXPECT_FALSE(LoadKernel(*mem, {}).ok());
}

TEST(KernelLoaderTest, RefusesANoteThatRunsOffTheSegment) {
  auto mem = Ram();
  std::vector<uint8_t> image =
      ElfBuilder().Load(0x100'0000, {1}, 1).PvhNote(0x100'0000).Build();
  // The note is the last thing in the file: claim a huge descriptor size.
  size_t note_at = image.size() - (sizeof(Elf64_Nhdr) + 8);
  uint32_t big = 0x7fffffff;
  std::memcpy(image.data() + note_at + offsetof(Elf64_Nhdr, n_descsz), &big, 4);
  auto k = LoadKernel(*mem, image);
  ASSERT_FALSE(k.ok());
  EXPECT_THAT(std::string(k.status().message()), HasSubstr("truncated ELF note"));
}

// A bzImage: boot sector + setup sectors, then the protected-mode kernel.
std::vector<uint8_t> BzImage(uint16_t version, uint8_t setup_sects,
                             size_t kernel_bytes) {
  std::vector<uint8_t> image((setup_sects + 1) * 512 + kernel_bytes, 0);
  setup_header hdr = {};
  hdr.setup_sects = setup_sects;
  hdr.boot_flag = 0xaa55;
  hdr.header = 0x53726448;
  hdr.version = version;
  hdr.loadflags = LOADED_HIGH;
  hdr.xloadflags = XLF_KERNEL_64;
  hdr.init_size = static_cast<uint32_t>(kernel_bytes * 2);
  std::memcpy(image.data() + 0x1f1, &hdr, sizeof(hdr));
  for (size_t i = 0; i < kernel_bytes; ++i) {
    image[(setup_sects + 1) * 512 + i] = static_cast<uint8_t>(i * 7);
  }
  return image;
}

TEST(KernelLoaderTest, LoadsBzImageAtOneMiBWithSetupHeader) {
  auto mem = Ram();
  std::vector<uint8_t> image = BzImage(0x020f, 2, 4096);
  auto k = LoadKernel(*mem, image);
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_EQ(k->protocol, BootProtocol::kLinux64);
  EXPECT_EQ(k->entry, kHighMemoryStart + 0x200);
  ASSERT_TRUE(k->setup.has_value());
  EXPECT_EQ(k->setup->version, 0x020f);
  EXPECT_EQ(k->end, kHighMemoryStart + 8192);  // init_size
  EXPECT_EQ(*mem->ReadObj<uint8_t>(kHighMemoryStart + 3), 21);
  // A bzImage cannot boot through PVH.
  EXPECT_FALSE(LoadKernel(*mem, image, BootPreference::kPvh).ok());
}

TEST(KernelLoaderTest, RefusesOldOrBrokenBzImages) {
  auto mem = Ram();
  EXPECT_THAT(std::string(LoadKernel(*mem, BzImage(0x0206, 4, 512)).status().message()),
              HasSubstr("older than 2.12"));
  std::vector<uint8_t> no64 = BzImage(0x020f, 4, 512);
  no64[0x1f1 + offsetof(setup_header, xloadflags)] = 0;
  EXPECT_FALSE(LoadKernel(*mem, no64).ok());
  // Setup sectors claim more than the whole file.
  std::vector<uint8_t> short_file = BzImage(0x020f, 4, 0);
  EXPECT_FALSE(LoadKernel(*mem, short_file).ok());
}

}  // namespace
}  // namespace sbx::vmm
