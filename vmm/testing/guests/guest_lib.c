#include "guest.h"

#define COM1 0x3f8

void serial_putc(char c) {
  /* Wait for the transmitter holding register to empty (LSR bit 5). */
  while (!(inb(COM1 + 5) & 0x20)) {
  }
  outb(COM1, (uint8_t)c);
}

void serial_puts(const char* s) {
  while (*s) serial_putc(*s++);
}

void serial_put_hex(uint64_t v) {
  static const char digits[] = "0123456789abcdef";
  char buf[17];
  int i = 16;
  buf[i] = 0;
  do {
    buf[--i] = digits[v & 0xf];
    v >>= 4;
  } while (v && i > 0);
  serial_puts(&buf[i]);
}

void serial_put_dec(uint64_t v) {
  char buf[21];
  int i = 20;
  buf[i] = 0;
  do {
    buf[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v && i > 0);
  serial_puts(&buf[i]);
}
