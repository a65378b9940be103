/* Exercises the VMM's exit paths: reads from an unmapped MMIO address and
 * an unclaimed port (the VMM answers all-ones), writes to both (ignored),
 * a string OUT to the serial port, and many PIO and MMIO round trips. */
#include "guest.h"

#define UNMAPPED_MMIO 0xd1000000ull
#define UNCLAIMED_PORT 0x2f8
#define ROUND_TRIPS 10000

void guest_main(const struct hvm_start_info* info) {
  (void)info;
  serial_puts("mmio-read=");
  serial_put_hex(mmio_read32(UNMAPPED_MMIO));
  serial_puts("\npio-read=");
  serial_put_hex(inb(UNCLAIMED_PORT));
  mmio_write32(UNMAPPED_MMIO, 0x12345678);
  outb(UNCLAIMED_PORT, 0x42);
  /* rep outsb: one exit carrying several bytes. */
  static const char rep[] = "\nrep-outsb-ok\n";
  const char* p = rep;
  uint64_t n = sizeof(rep) - 1;
  __asm__ volatile("rep outsb" : "+S"(p), "+c"(n) : "d"((uint16_t)0x3f8) : "memory");
  for (int i = 0; i < ROUND_TRIPS; ++i) outb(UNCLAIMED_PORT, (uint8_t)i);
  for (int i = 0; i < ROUND_TRIPS; ++i) mmio_write32(UNMAPPED_MMIO, (uint32_t)i);
  serial_puts("round-trips=");
  serial_put_dec(ROUND_TRIPS);
  serial_puts("\n");
}
