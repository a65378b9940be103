/* Loads an empty IDT and raises an exception: the #GP of a load from a
 * non-canonical address cannot be delivered, nor the #DF that follows, so
 * the CPU shuts down (triple fault). Not int3: PVM cannot emulate an INT3
 * at CPL0 (shared/PVM.md) and would end the VM with an emulation failure
 * instead. */
#include "guest.h"

void guest_main(const struct hvm_start_info* info) {
  (void)info;
  serial_puts("sbx-guest: about to triple fault\n");
  struct __attribute__((packed)) {
    uint16_t limit;
    uint64_t base;
  } idt = {0, 0};
  __asm__ volatile("lidt %0" : : "m"(idt));
  volatile uint64_t* non_canonical = (volatile uint64_t*)0x8000000000000000ull;
  (void)*non_canonical;
  serial_puts("sbx-guest: still alive?\n");
}
