/* Prints a greeting, then what the VMM handed over through PVH (magic,
 * command line, memory map), and reboots. */
#include "guest.h"

void guest_main(const struct hvm_start_info* info) {
  serial_puts("sbx-guest: hello\n");
  serial_puts("start_info magic=");
  serial_put_hex(info->magic);
  serial_puts("\ncmdline=");
  serial_puts((const char*)info->cmdline_paddr);
  serial_puts("\nmemmap:");
  const struct hvm_memmap_entry* map =
      (const struct hvm_memmap_entry*)info->memmap_paddr;
  uint64_t ram = 0;
  for (uint32_t i = 0; i < info->memmap_entries; ++i) {
    if (map[i].type == 1) ram += map[i].size;
  }
  serial_puts(" entries=");
  serial_put_dec(info->memmap_entries);
  serial_puts(" ram_kib=");
  serial_put_dec(ram >> 10);
  serial_puts("\nsbx-guest: bye\n");
}
