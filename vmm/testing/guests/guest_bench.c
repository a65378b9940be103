/* Benchmark guest, run the same way under sbx-vmm and QEMU microvm:
 *   bench=boot     end at once (VM create -> guest end)
 *   bench=pio:N    N port writes to an unclaimed port, then end
 *   bench=mmio:N   N MMIO writes to an unmapped address, then end
 *   bench=spin     print "ready" and spin (for memory measurements)
 *   bench=tick:N   print "ready", then forever: one '.' and N pause
 *                  instructions (snapshot benchmarks: a VM restored from
 *                  a snapshot of it prints a '.' soon after it runs)
 * It ends through port 0xf4 (QEMU's isa-debug-exit; unclaimed, so ignored,
 * in sbx-vmm) and then the i8042 reset (sbx-vmm's way out). */
#include "guest.h"

static const char* find(const char* s, const char* key) {
  for (; *s; ++s) {
    int i = 0;
    while (key[i] && s[i] == key[i]) ++i;
    if (!key[i]) return s + i;
  }
  return 0;
}

static uint64_t parse_dec(const char* p) {
  uint64_t v = 0;
  while (*p >= '0' && *p <= '9') v = v * 10 + (uint64_t)(*p++ - '0');
  return v;
}

void guest_main(const struct hvm_start_info* info) {
  const char* cmdline = (const char*)info->cmdline_paddr;
  const char* arg;
  if ((arg = find(cmdline, "bench=pio:"))) {
    uint64_t n = parse_dec(arg);
    for (uint64_t i = 0; i < n; ++i) outb(0x2f8, (uint8_t)i);
  } else if ((arg = find(cmdline, "bench=mmio:"))) {
    uint64_t n = parse_dec(arg);
    for (uint64_t i = 0; i < n; ++i) mmio_write32(0xd1000000ull, (uint32_t)i);
  } else if ((arg = find(cmdline, "bench=tick:"))) {
    uint64_t n = parse_dec(arg);
    serial_puts("ready\n");
    for (;;) {
      serial_putc('.');
      for (uint64_t i = 0; i < n; ++i) __asm__ volatile("pause");
    }
  } else if (find(cmdline, "bench=spin")) {
    serial_puts("ready\n");
    for (;;) __asm__ volatile("pause");
  }
  outb(0xf4, 0);  /* QEMU isa-debug-exit */
}
