#include "vmm/boot/kernel_loader.h"

#include <elf.h>

#include <cstring>
#include <string>

#include "base/hex.h"
#include "base/status_macros.h"
#include "vmm/boot/layout.h"

namespace sbx::vmm {
namespace {

// Xen's ELF note naming the PVH 32-bit entry point (xen/include/public/
// elfnote.h, XEN_ELFNOTE_PHYS32_ENTRY).
constexpr uint32_t kXenElfNotePhys32Entry = 18;
constexpr uint32_t kBzImageMagic = 0x53726448;  // "HdrS"
constexpr uint16_t kMinBootProtocol = 0x020c;   // 2.12: xloadflags

absl::Status Bad(const std::string& what) {
  return absl::InvalidArgumentError("not a usable x86-64 kernel: " + what);
}

// Copies a T at image[offset], checking bounds.
template <typename T>
absl::StatusOr<T> At(std::span<const uint8_t> image, uint64_t offset,
                     const char* what) {
  if (offset > image.size() || image.size() - offset < sizeof(T)) {
    return Bad(std::string(what) + " lies past the end of the file");
  }
  T value;
  std::memcpy(&value, image.data() + offset, sizeof(T));
  return value;
}

// The PVH entry from the ELF's notes, if any.
absl::StatusOr<std::optional<GuestAddress>> FindPvhEntry(
    std::span<const uint8_t> image, const Elf64_Phdr& note) {
  if (note.p_offset > image.size() || image.size() - note.p_offset < note.p_filesz) {
    return Bad("a note segment lies past the end of the file");
  }
  std::span<const uint8_t> notes = image.subspan(note.p_offset, note.p_filesz);
  uint64_t pos = 0;
  auto align4 = [](uint64_t v) { return (v + 3) & ~uint64_t{3}; };
  while (notes.size() - pos >= sizeof(Elf64_Nhdr)) {
    Elf64_Nhdr hdr;
    std::memcpy(&hdr, notes.data() + pos, sizeof(hdr));
    uint64_t name_at = pos + sizeof(hdr);
    uint64_t desc_at = name_at + align4(hdr.n_namesz);
    uint64_t next = desc_at + align4(hdr.n_descsz);
    if (next > notes.size()) return Bad("a truncated ELF note");
    if (hdr.n_type == kXenElfNotePhys32Entry && hdr.n_namesz == 4 &&
        std::memcmp(notes.data() + name_at, "Xen", 4) == 0) {
      // The address is 32-bit; some kernels emit it in an 8-byte field.
      if (hdr.n_descsz != 4 && hdr.n_descsz != 8) {
        return Bad("the PVH entry note has size " +
                   std::to_string(hdr.n_descsz));
      }
      uint32_t entry;
      std::memcpy(&entry, notes.data() + desc_at, sizeof(entry));
      return std::optional<GuestAddress>(entry);
    }
    pos = next;
  }
  return std::optional<GuestAddress>();
}

absl::StatusOr<LoadedKernel> LoadElf(GuestMemory& memory,
                                     std::span<const uint8_t> image,
                                     BootPreference preference) {
  SBX_ASSIGN_OR_RETURN(Elf64_Ehdr ehdr, At<Elf64_Ehdr>(image, 0, "ELF header"));
  if (ehdr.e_ident[EI_CLASS] != ELFCLASS64 ||
      ehdr.e_ident[EI_DATA] != ELFDATA2LSB || ehdr.e_machine != EM_X86_64) {
    return Bad("an ELF file, but not little-endian 64-bit x86-64");
  }
  if (ehdr.e_phentsize != sizeof(Elf64_Phdr) || ehdr.e_phnum == 0) {
    return Bad("ELF program headers missing or of unexpected size");
  }

  LoadedKernel kernel;
  kernel.end = 0;
  std::optional<GuestAddress> pvh_entry;
  bool loaded_any = false;
  for (uint16_t i = 0; i < ehdr.e_phnum; ++i) {
    SBX_ASSIGN_OR_RETURN(
        Elf64_Phdr ph,
        At<Elf64_Phdr>(image, ehdr.e_phoff + uint64_t{i} * sizeof(Elf64_Phdr),
                       "a program header"));
    if (ph.p_type == PT_NOTE && !pvh_entry.has_value()) {
      SBX_ASSIGN_OR_RETURN(pvh_entry, FindPvhEntry(image, ph));
      continue;
    }
    if (ph.p_type != PT_LOAD || ph.p_memsz == 0) continue;
    if (ph.p_filesz > ph.p_memsz) return Bad("a segment's file size exceeds its memory size");
    if (ph.p_offset > image.size() || image.size() - ph.p_offset < ph.p_filesz) {
      return Bad("a segment lies past the end of the file");
    }
    if (ph.p_paddr < kHighMemoryStart) {
      return Bad("a segment loads at " + Hex(ph.p_paddr) +
                 ", below 1 MiB where the VMM keeps boot structures");
    }
    absl::StatusOr<std::span<uint8_t>> dst = memory.Slice(ph.p_paddr, ph.p_memsz);
    if (!dst.ok()) {
      return absl::InvalidArgumentError(
          "the kernel does not fit in guest RAM: a segment needs [" +
          Hex(ph.p_paddr) + ", " + Hex(ph.p_paddr + ph.p_memsz) +
          ") — give the VM more memory");
    }
    std::memcpy(dst->data(), image.data() + ph.p_offset, ph.p_filesz);
    std::memset(dst->data() + ph.p_filesz, 0, ph.p_memsz - ph.p_filesz);
    kernel.end = std::max(kernel.end, ph.p_paddr + ph.p_memsz);
    loaded_any = true;
  }
  if (!loaded_any) return Bad("the ELF file has no loadable segment");

  if (preference != BootPreference::kLinux64 && pvh_entry.has_value()) {
    kernel.protocol = BootProtocol::kPvh;
    kernel.entry = *pvh_entry;
  } else if (preference == BootPreference::kPvh) {
    return Bad("PVH boot asked for, but the ELF has no PVH entry note "
               "(build the kernel with CONFIG_PVH=y)");
  } else {
    // x86-64 vmlinux links ENTRY(phys_startup_64): e_entry is physical.
    kernel.protocol = BootProtocol::kLinux64;
    kernel.entry = ehdr.e_entry;
  }
  if (!memory.Contains(kernel.entry, 1)) {
    return Bad("the entry point " + Hex(kernel.entry) + " is not in guest RAM");
  }
  return kernel;
}

absl::StatusOr<LoadedKernel> LoadBzImage(GuestMemory& memory,
                                         std::span<const uint8_t> image,
                                         BootPreference preference) {
  if (preference == BootPreference::kPvh) {
    return Bad("PVH boot needs an ELF vmlinux, not a bzImage");
  }
  constexpr uint64_t kSetupHeaderOffset = 0x1f1;
  SBX_ASSIGN_OR_RETURN(setup_header hdr, At<setup_header>(image, kSetupHeaderOffset,
                                                          "the setup header"));
  if (hdr.header != kBzImageMagic) return Bad("no ELF or bzImage header");
  if (hdr.version < kMinBootProtocol) {
    char v[16];
    std::snprintf(v, sizeof(v), "%u.%02u", hdr.version >> 8, hdr.version & 0xff);
    return Bad(std::string("boot protocol ") + v + " is older than 2.12");
  }
  if (!(hdr.xloadflags & XLF_KERNEL_64)) return Bad("bzImage has no 64-bit entry");
  if (!(hdr.loadflags & LOADED_HIGH)) return Bad("bzImage does not load high");
  uint64_t setup_sects = hdr.setup_sects == 0 ? 4 : hdr.setup_sects;
  uint64_t kernel_offset = (setup_sects + 1) * 512;
  if (kernel_offset >= image.size()) return Bad("bzImage has no kernel after its setup code");
  uint64_t size = image.size() - kernel_offset;
  // The decompressor needs init_size bytes from the load address.
  uint64_t needed = std::max<uint64_t>(size, hdr.init_size);
  absl::StatusOr<std::span<uint8_t>> dst = memory.Slice(layout::kBzImageLoad, needed);
  if (!dst.ok()) {
    return absl::InvalidArgumentError(
        "the kernel does not fit in guest RAM: it needs " +
        std::to_string(needed >> 20) + " MiB above 1 MiB — give the VM more memory");
  }
  std::memcpy(dst->data(), image.data() + kernel_offset, size);

  LoadedKernel kernel;
  kernel.protocol = BootProtocol::kLinux64;
  kernel.entry = layout::kBzImageLoad + 0x200;  // startup_64
  kernel.end = layout::kBzImageLoad + needed;
  kernel.setup = hdr;
  return kernel;
}

}  // namespace

absl::StatusOr<LoadedKernel> LoadKernel(GuestMemory& memory,
                                        std::span<const uint8_t> image,
                                        BootPreference preference) {
  if (image.size() >= SELFMAG && std::memcmp(image.data(), ELFMAG, SELFMAG) == 0) {
    return LoadElf(memory, image, preference);
  }
  return LoadBzImage(memory, image, preference);
}

}  // namespace sbx::vmm
