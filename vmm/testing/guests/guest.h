/* Helpers for sbx's freestanding test guests: port I/O, MMIO, the serial
 * console and the PVH start info. No libc; nothing PVM cannot emulate. */
#ifndef SBX_VMM_TESTING_GUESTS_GUEST_H_
#define SBX_VMM_TESTING_GUESTS_GUEST_H_

#include <stdint.h>

struct hvm_start_info {
  uint32_t magic;
  uint32_t version;
  uint32_t flags;
  uint32_t nr_modules;
  uint64_t modlist_paddr;
  uint64_t cmdline_paddr;
  uint64_t rsdp_paddr;
  uint64_t memmap_paddr;
  uint32_t memmap_entries;
  uint32_t reserved;
};

struct hvm_memmap_entry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;
  uint32_t reserved;
};

static inline void outb(uint16_t port, uint8_t v) {
  __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}
static inline uint8_t inb(uint16_t port) {
  uint8_t v;
  __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}
static inline uint32_t mmio_read32(uint64_t addr) {
  return *(volatile uint32_t*)addr;
}
static inline void mmio_write32(uint64_t addr, uint32_t v) {
  *(volatile uint32_t*)addr = v;
}

void serial_putc(char c);
void serial_puts(const char* s);
void serial_put_hex(uint64_t v);
void serial_put_dec(uint64_t v);
/* Ends the VM through the i8042 reset line. */
__attribute__((noreturn)) void guest_reboot(void);

/* Each guest defines this; its return ends the VM (reboot). */
void guest_main(const struct hvm_start_info* info);

#endif
