/* Loads an empty IDT and raises an exception: #BP cannot be delivered,
 * nor the #GP or #DF that follow, so the CPU shuts down (triple fault). */
#include "guest.h"

void guest_main(const struct hvm_start_info* info) {
  (void)info;
  serial_puts("sbx-guest: about to triple fault\n");
  struct __attribute__((packed)) {
    uint16_t limit;
    uint64_t base;
  } idt = {0, 0};
  __asm__ volatile("lidt %0" : : "m"(idt));
  __asm__ volatile("int3");
  serial_puts("sbx-guest: still alive?\n");
}
