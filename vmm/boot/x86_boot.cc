#include "vmm/boot/x86_boot.h"

#include <asm/bootparam.h>

#include <array>
#include <cstring>
#include <string>
#include <vector>

#include "base/status_macros.h"
#include "vmm/boot/layout.h"

namespace sbx::vmm {
namespace {

// A GDT descriptor (Intel SDM vol. 3 §3.4.5) from flags, base and limit.
constexpr uint64_t GdtEntry(uint16_t flags, uint32_t base, uint32_t limit) {
  return (uint64_t{base & 0xff000000u} << (56 - 24)) |
         (uint64_t{flags & 0xf0ffu} << 40) |
         (uint64_t{limit & 0x000f0000u} << (48 - 16)) |
         (uint64_t{base & 0x00ffffffu} << 16) | uint64_t{limit & 0x0000ffffu};
}

// Packs bytes into a vector with a running checksum (MP spec: all bytes of
// a structure sum to 0 mod 256).
class ByteWriter {
 public:
  template <typename T>
  void Put(const T& v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    bytes_.insert(bytes_.end(), p, p + sizeof(T));
  }
  void PutBytes(const char* s, size_t n) { bytes_.insert(bytes_.end(), s, s + n); }
  std::vector<uint8_t>& bytes() { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

uint8_t Checksum(std::span<const uint8_t> bytes) {
  uint8_t sum = 0;
  for (uint8_t b : bytes) sum = static_cast<uint8_t>(sum + b);
  return static_cast<uint8_t>(-sum);
}

absl::Status WriteCmdline(GuestMemory& memory, std::string_view cmdline) {
  if (cmdline.size() + 1 > layout::kCmdlineMax) {
    return absl::InvalidArgumentError("kernel command line longer than " +
                                      std::to_string(layout::kCmdlineMax - 1));
  }
  std::vector<uint8_t> bytes(cmdline.begin(), cmdline.end());
  bytes.push_back(0);
  return memory.Write(layout::kCmdline, bytes);
}

absl::Status WritePvhStartInfo(GuestMemory& memory) {
  std::vector<E820Entry> map = memory.E820Map();
  HvmStartInfo info = {};
  info.magic = HvmStartInfo::kMagic;
  info.version = 1;
  info.cmdline_paddr = layout::kCmdline;
  info.memmap_paddr = layout::kPvhStartInfo + sizeof(HvmStartInfo);
  info.memmap_entries = static_cast<uint32_t>(map.size());
  SBX_RETURN_IF_ERROR(memory.WriteObj(layout::kPvhStartInfo, info));
  for (size_t i = 0; i < map.size(); ++i) {
    HvmMemmapEntry e = {map[i].addr, map[i].size, map[i].type, 0};
    SBX_RETURN_IF_ERROR(
        memory.WriteObj(info.memmap_paddr + i * sizeof(HvmMemmapEntry), e));
  }
  return absl::OkStatus();
}

absl::Status WriteZeroPage(GuestMemory& memory, const LoadedKernel& kernel,
                           std::string_view cmdline) {
  boot_params params = {};
  if (kernel.setup.has_value()) params.hdr = *kernel.setup;
  setup_header& hdr = params.hdr;
  // Boot protocol §"The real-mode kernel header": what a boot loader fills in.
  hdr.type_of_loader = 0xff;  // undefined loader
  hdr.boot_flag = 0xaa55;
  hdr.header = 0x53726448;  // "HdrS"
  hdr.loadflags |= LOADED_HIGH | KEEP_SEGMENTS;
  hdr.cmd_line_ptr = static_cast<uint32_t>(layout::kCmdline);
  hdr.cmdline_size = static_cast<uint32_t>(cmdline.size());
  if (!kernel.setup.has_value()) {
    hdr.kernel_alignment = 0x0100'0000;
  }
  std::vector<E820Entry> map = memory.E820Map();
  if (map.size() > std::size(params.e820_table)) {
    return absl::InternalError("too many e820 entries");
  }
  for (size_t i = 0; i < map.size(); ++i) {
    params.e820_table[i] = {map[i].addr, map[i].size, map[i].type};
  }
  params.e820_entries = static_cast<uint8_t>(map.size());
  return memory.WriteObj(layout::kZeroPage, params);
}

// Intel MultiProcessor Specification 1.4 structures (chapter 4).
#pragma pack(push, 1)
struct MpFloatingPointer {
  char signature[4];  // "_MP_"
  uint32_t physptr;
  uint8_t length;  // in 16-byte units
  uint8_t spec_rev;
  uint8_t checksum;
  uint8_t feature[5];
};
struct MpConfigHeader {
  char signature[4];  // "PCMP"
  uint16_t length;
  uint8_t spec_rev;
  uint8_t checksum;
  char oem[8];
  char product[12];
  uint32_t oem_ptr;
  uint16_t oem_size;
  uint16_t entry_count;
  uint32_t lapic_address;
  uint16_t ext_length;
  uint8_t ext_checksum;
  uint8_t reserved;
};
struct MpProcessor {
  uint8_t type = 0;
  uint8_t apic_id;
  uint8_t apic_version;
  uint8_t flags;  // bit 0 enabled, bit 1 bootstrap processor
  uint32_t signature;
  uint32_t features;
  uint32_t reserved[2];
};
struct MpBus {
  uint8_t type = 1;
  uint8_t bus_id;
  char bus_type[6];
};
struct MpIoapic {
  uint8_t type = 2;
  uint8_t apic_id;
  uint8_t apic_version;
  uint8_t flags;  // bit 0 enabled
  uint32_t address;
};
struct MpInterrupt {
  uint8_t type;  // 3 I/O interrupt, 4 local interrupt
  uint8_t irq_type;  // 0 INT, 1 NMI, 3 ExtINT
  uint16_t flags;  // 0: conforms to the bus
  uint8_t source_bus;
  uint8_t source_irq;
  uint8_t dest_apic;
  uint8_t dest_pin;
};
#pragma pack(pop)
static_assert(sizeof(MpFloatingPointer) == 16);
static_assert(sizeof(MpConfigHeader) == 44);
static_assert(sizeof(MpProcessor) == 20);
static_assert(sizeof(MpBus) == 8 && sizeof(MpIoapic) == 8 &&
              sizeof(MpInterrupt) == 8);

}  // namespace

absl::Status WriteGdt(GuestMemory& memory) {
  const std::array<uint64_t, 5> gdt = {
      0,                                 // null
      GdtEntry(0xa09b, 0, 0xfffff),      // 0x08: 64-bit code, L=1
      GdtEntry(0xc093, 0, 0xfffff),      // 0x10: flat data
      GdtEntry(0x808b, 0, 0xfffff),      // 0x18: TSS (busy)
      GdtEntry(0xc09b, 0, 0xfffff),      // 0x20: 32-bit code, D=1
  };
  SBX_RETURN_IF_ERROR(memory.WriteObj(layout::kGdt, gdt));
  return memory.WriteObj<uint64_t>(layout::kIdt, 0);
}

absl::Status WriteIdentityPageTables(GuestMemory& memory) {
  constexpr uint64_t kPresentWritable = 0x3;
  constexpr uint64_t kHugePage = 0x80;  // PS: a 2 MiB page
  SBX_RETURN_IF_ERROR(memory.WriteObj<uint64_t>(layout::kPml4,
                                                layout::kPdpt | kPresentWritable));
  for (uint64_t i = 0; i < 4; ++i) {
    GuestAddress pd = layout::kPd + i * 4096;
    SBX_RETURN_IF_ERROR(memory.WriteObj<uint64_t>(layout::kPdpt + i * 8,
                                                  pd | kPresentWritable));
    std::array<uint64_t, 512> entries;
    for (uint64_t j = 0; j < 512; ++j) {
      entries[j] = ((i * 512 + j) << 21) | kPresentWritable | kHugePage;
    }
    SBX_RETURN_IF_ERROR(memory.WriteObj(pd, entries));
  }
  return absl::OkStatus();
}

absl::Status WriteMpTable(GuestMemory& memory, int num_cpus) {
  if (num_cpus < 1 || num_cpus > 254) {
    return absl::InvalidArgumentError("MP table: bad CPU count");
  }
  const uint8_t ioapic_id = static_cast<uint8_t>(num_cpus);  // after the CPUs
  ByteWriter entries;
  uint16_t count = 0;
  for (int i = 0; i < num_cpus; ++i) {
    MpProcessor cpu = {};
    cpu.type = 0;
    cpu.apic_id = static_cast<uint8_t>(i);
    cpu.apic_version = 0x14;
    cpu.flags = 1 | (i == 0 ? 2 : 0);
    cpu.signature = 0x600;  // family 6
    cpu.features = 0x201;   // FPU, APIC
    entries.Put(cpu);
    ++count;
  }
  MpBus bus = {};
  bus.type = 1;
  bus.bus_id = 0;
  std::memcpy(bus.bus_type, "ISA   ", 6);
  entries.Put(bus);
  ++count;
  MpIoapic ioapic = {};
  ioapic.type = 2;
  ioapic.apic_id = ioapic_id;
  ioapic.apic_version = 0x11;
  ioapic.flags = 1;
  ioapic.address = static_cast<uint32_t>(kIoapicAddress);
  entries.Put(ioapic);
  ++count;
  for (int pin = 0; pin < kIoapicPins; ++pin) {
    // ISA IRQ n arrives at IOAPIC pin n (KVM's default GSI routing).
    entries.Put(MpInterrupt{3, 0, 0, 0, static_cast<uint8_t>(pin), ioapic_id,
                            static_cast<uint8_t>(pin)});
    ++count;
  }
  // LINT0 is ExtINT (the 8259), LINT1 NMI, on every local APIC.
  entries.Put(MpInterrupt{4, 3, 0, 0, 0, 0xff, 0});
  entries.Put(MpInterrupt{4, 1, 0, 0, 0, 0xff, 1});
  count += 2;

  MpConfigHeader header = {};
  std::memcpy(header.signature, "PCMP", 4);
  header.length = static_cast<uint16_t>(sizeof(header) + entries.bytes().size());
  header.spec_rev = 4;
  std::memcpy(header.oem, "SBX     ", 8);
  std::memcpy(header.product, "SBX-VMM     ", 12);
  header.entry_count = count;
  header.lapic_address = static_cast<uint32_t>(kLapicAddress);
  ByteWriter table;
  table.Put(header);
  table.bytes().insert(table.bytes().end(), entries.bytes().begin(),
                       entries.bytes().end());
  table.bytes()[offsetof(MpConfigHeader, checksum)] = Checksum(table.bytes());

  const GuestAddress table_addr = layout::kMpTable + sizeof(MpFloatingPointer);
  if (table_addr + table.bytes().size() > kHighMemoryStart) {
    return absl::InternalError("MP table does not fit below 1 MiB");
  }
  MpFloatingPointer fp = {};
  std::memcpy(fp.signature, "_MP_", 4);
  fp.physptr = static_cast<uint32_t>(table_addr);
  fp.length = 1;
  fp.spec_rev = 4;
  fp.checksum = Checksum(std::span(reinterpret_cast<const uint8_t*>(&fp), sizeof(fp)));
  SBX_RETURN_IF_ERROR(memory.WriteObj(layout::kMpTable, fp));
  return memory.Write(table_addr, table.bytes());
}

absl::Status WriteBootData(GuestMemory& memory, const LoadedKernel& kernel,
                           std::string_view cmdline, int num_cpus) {
  if (memory.ram_bytes() < layout::kMinRamBytes) {
    return absl::InvalidArgumentError("guest RAM below the 16 MiB minimum");
  }
  SBX_RETURN_IF_ERROR(WriteCmdline(memory, cmdline));
  SBX_RETURN_IF_ERROR(WriteGdt(memory));
  SBX_RETURN_IF_ERROR(WriteMpTable(memory, num_cpus));
  switch (kernel.protocol) {
    case BootProtocol::kPvh:
      return WritePvhStartInfo(memory);
    case BootProtocol::kLinux64:
      SBX_RETURN_IF_ERROR(WriteIdentityPageTables(memory));
      return WriteZeroPage(memory, kernel, cmdline);
  }
  return absl::InternalError("unknown boot protocol");
}

}  // namespace sbx::vmm
