/* Says it is running, then spins forever: for tests that stop a VM from
 * the host. */
#include "guest.h"

void guest_main(const struct hvm_start_info* info) {
  (void)info;
  serial_puts("sbx-guest: spinning\n");
  for (;;) {
    __asm__ volatile("pause");
  }
}
