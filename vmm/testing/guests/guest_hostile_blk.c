/* A hostile driver: posts broken descriptor chains to virtio-blk, then
 * resets the device and shows it still serves a good request. The VMM
 * must survive each attack; the guest reports what it saw. */
#include "virtio_guest.h"

/* Polls (each an exit) before an attack counts as unanswered. */
#define POLLS 2000ull

static struct virtq vq __attribute__((aligned(4096)));
static struct blk_req req;
static uint8_t data[512];
static volatile uint8_t status;

static void attack(uint64_t base, const char* name) {
  serial_puts("hostile: ");
  serial_puts(name);
  serial_puts(" -> ");
  int64_t len = virtio_wait_used(base, &vq, POLLS);
  serial_puts(len < 0 ? "no answer" : "answered");
  serial_puts("\n");
  /* Start over from a reset device (§2.4), whatever state it is in. */
  if (virtio_init(base, 2, &vq) != 0) serial_puts("hostile: re-init failed\n");
}

void guest_main(const struct hvm_start_info* info) {
  uint64_t base = virtio_find_device((const char*)info->cmdline_paddr, 0);
  if (!base || virtio_init(base, 2, &vq) != 0) {
    serial_puts("hostile: no device\n");
    return;
  }
  req.type = 0;  /* read */
  req.sector = 0;

  /* 1. A head index beyond the queue. */
  virtio_submit(base, &vq, 200);
  attack(base, "head index out of range");

  /* 2. A descriptor loop: 0 -> 1 -> 0 -> ... */
  vq.desc[0] = (struct virtq_desc){(uint64_t)&req, sizeof(req), VIRTQ_DESC_F_NEXT, 1};
  vq.desc[1] = (struct virtq_desc){(uint64_t)data, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 0};
  virtio_submit(base, &vq, 0);
  attack(base, "descriptor loop");

  /* 3. A data buffer far beyond guest RAM, and one straddling its end. */
  vq.desc[0] = (struct virtq_desc){(uint64_t)&req, sizeof(req), VIRTQ_DESC_F_NEXT, 1};
  vq.desc[1] = (struct virtq_desc){0xffffffff00000000ull, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2};
  vq.desc[2] = (struct virtq_desc){(uint64_t)&status, 1, VIRTQ_DESC_F_WRITE, 0};
  virtio_submit(base, &vq, 0);
  attack(base, "buffer outside RAM");
  vq.desc[0] = (struct virtq_desc){(uint64_t)&req, sizeof(req), VIRTQ_DESC_F_NEXT, 1};
  vq.desc[1] = (struct virtq_desc){(64ull << 20) - 256, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2};
  vq.desc[2] = (struct virtq_desc){(uint64_t)&status, 1, VIRTQ_DESC_F_WRITE, 0};
  virtio_submit(base, &vq, 0);
  attack(base, "buffer straddling the end of RAM");

  /* 4. An avail index far ahead of what was ever posted. */
  vq.avail.idx = 5000;
  __asm__ volatile("mfence" ::: "memory");
  virtio_write32(base, 0x050, 0);
  attack(base, "avail index jump");

  /* 5. Unknown register offsets and wrong widths. */
  virtio_write32(base, 0x0fc, 0xffffffff);
  virtio_write32(base, 0x1f0, 0xffffffff);
  *(volatile uint8_t*)(base + 0x070) = 0xff;
  serial_puts("hostile: bad register writes done\n");
  virtio_init(base, 2, &vq);

  /* After all that, a good read must still work. */
  vq.desc[0] = (struct virtq_desc){(uint64_t)&req, sizeof(req), VIRTQ_DESC_F_NEXT, 1};
  vq.desc[1] = (struct virtq_desc){(uint64_t)data, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2};
  vq.desc[2] = (struct virtq_desc){(uint64_t)&status, 1, VIRTQ_DESC_F_WRITE, 0};
  status = 0xaa;
  virtio_submit(base, &vq, 0);
  int64_t len = virtio_wait_used(base, &vq, POLLS * 100);
  serial_puts("hostile: good read after attacks status=");
  serial_put_dec(len < 0 ? 999 : status);
  serial_puts("\n");
}
