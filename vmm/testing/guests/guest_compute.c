/* A long, deterministic computation for snapshot tests: STEPS rounds of
 * xorshift64 folded into a RESULT_WORDS-word table at RESULTS (guest
 * memory the host reads afterwards), a progress line on the serial
 * console after each round, and a checksum of the table at the end. An
 * uninterrupted run and a run snapshotted, restored and finished elsewhere
 * must print the same lines and leave the same table. */
#include "guest.h"

#define RESULTS 0x400000ULL /* 4 MiB: above the guest image and its stack */
#define RESULT_WORDS 4096   /* 32 KiB */
#define STEPS 16
#define ITERATIONS 2000

void guest_main(const struct hvm_start_info* info) {
  (void)info;
  volatile uint64_t* results = (volatile uint64_t*)RESULTS;
  uint64_t x = 0x9e3779b97f4a7c15ULL;
  serial_puts("compute: start\n");
  for (uint64_t step = 0; step < STEPS; ++step) {
    for (uint64_t i = 0; i < ITERATIONS; ++i) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      results[(step * ITERATIONS + i) % RESULT_WORDS] += x;
    }
    serial_puts("compute: step ");
    serial_put_dec(step);
    serial_puts(" x=");
    serial_put_hex(x);
    serial_puts("\n");
  }
  uint64_t sum = 0;
  for (uint64_t i = 0; i < RESULT_WORDS; ++i) sum = sum * 31 + results[i];
  serial_puts("compute: done sum=");
  serial_put_hex(sum);
  serial_puts("\n");
}
