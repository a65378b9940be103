/* Drives the first virtio-blk disk through a minimal polling driver:
 * capacity, write sector 1, read it back, flush, get-id, and a read past
 * the end of the disk (must fail with IOERR). */
#include "virtio_guest.h"

#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_T_GET_ID 8
/* Polls (each an exit) before a request counts as unanswered. */
#define POLLS 200000ull

static struct virtq vq __attribute__((aligned(4096)));
static struct blk_req req;
static uint8_t data[512] __attribute__((aligned(512)));
static volatile uint8_t status;

/* One request: header, optional data buffer, status byte. Returns the
 * status byte, or 0xee if the device never answered. */
static uint8_t request(uint64_t base, uint32_t type, uint64_t sector,
                       uint32_t data_len, int device_writes_data) {
  req.type = type;
  req.reserved = 0;
  req.sector = sector;
  status = 0xaa;
  vq.desc[0] = (struct virtq_desc){(uint64_t)&req, sizeof(req), VIRTQ_DESC_F_NEXT, 1};
  uint16_t last = 1;
  if (data_len) {
    vq.desc[1] = (struct virtq_desc){(uint64_t)data, data_len,
                                     (uint16_t)(VIRTQ_DESC_F_NEXT |
                                                (device_writes_data ? VIRTQ_DESC_F_WRITE : 0)),
                                     2};
    last = 2;
  }
  vq.desc[last] = (struct virtq_desc){(uint64_t)&status, 1, VIRTQ_DESC_F_WRITE, 0};
  if (!data_len) vq.desc[0].next = 1;
  virtio_submit(base, &vq, 0);
  if (virtio_wait_used(base, &vq, POLLS) < 0) return 0xee;
  return status;
}

void guest_main(const struct hvm_start_info* info) {
  uint64_t base = virtio_find_device((const char*)info->cmdline_paddr, 0);
  serial_puts("blk: device at ");
  serial_put_hex(base);
  serial_puts("\n");
  if (!base) return;
  int r = virtio_init(base, 2, &vq);
  if (r) {
    serial_puts("blk: init failed at step ");
    serial_put_dec((uint64_t)-r);
    serial_puts("\n");
    return;
  }
  uint64_t capacity = (uint64_t)virtio_read32(base, 0x100) |
                      ((uint64_t)virtio_read32(base, 0x104) << 32);
  serial_puts("blk: capacity=");
  serial_put_dec(capacity);
  serial_puts("\n");

  for (int i = 0; i < 512; ++i) data[i] = (uint8_t)(i ^ 0x5a);
  serial_puts("blk: write status=");
  serial_put_dec(request(base, BLK_T_OUT, 1, 512, 0));
  for (int i = 0; i < 512; ++i) data[i] = 0;
  serial_puts("\nblk: read status=");
  serial_put_dec(request(base, BLK_T_IN, 1, 512, 1));
  int same = 1;
  for (int i = 0; i < 512; ++i) same &= data[i] == (uint8_t)(i ^ 0x5a);
  serial_puts(same ? "\nblk: read matches write\n" : "\nblk: read MISMATCH\n");
  serial_puts("blk: flush status=");
  serial_put_dec(request(base, BLK_T_FLUSH, 0, 0, 0));
  for (int i = 0; i < 21; ++i) data[i] = 0;
  serial_puts("\nblk: get-id status=");
  serial_put_dec(request(base, BLK_T_GET_ID, 0, 20, 1));
  serial_puts(" id=");
  serial_puts((const char*)data);
  serial_puts("\nblk: read past end status=");
  serial_put_dec(request(base, BLK_T_IN, capacity, 512, 1));
  serial_puts("\nblk: done\n");
}
