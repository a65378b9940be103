/* A guest that never stops attacking its VMM (issue 7): each round it
 * storms the virtio-blk device with queue notifications for the same good
 * request (each a device interrupt), resets and re-initializes the device,
 * writes and reads MMIO addresses no device has and I/O ports nothing
 * listens on, floods the serial console, and reports the round. The host
 * must stay responsive, its neighbours must keep running, its control
 * channel must answer, its console file must stop growing at its bound. */
#include "virtio_guest.h"

#define NOTIFIES 32
#define FLOOD_BYTES 256

static struct virtq vq __attribute__((aligned(4096)));
static struct blk_req req;
static uint8_t data[512];
static volatile uint8_t status;

void guest_main(const struct hvm_start_info* info) {
  uint64_t base = virtio_find_device((const char*)info->cmdline_paddr, 0);
  if (!base || virtio_init(base, 2, &vq) != 0) {
    serial_puts("storm: no device\n");
    return;
  }
  serial_puts("storm: start\n");
  for (uint64_t round = 0;; ++round) {
    /* A good read, notified over and over. */
    req.type = 0;
    req.sector = round % 64;
    vq.desc[0] = (struct virtq_desc){(uint64_t)&req, sizeof(req), VIRTQ_DESC_F_NEXT, 1};
    vq.desc[1] = (struct virtq_desc){(uint64_t)data, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2};
    vq.desc[2] = (struct virtq_desc){(uint64_t)&status, 1, VIRTQ_DESC_F_WRITE, 0};
    status = 0xaa;
    virtio_submit(base, &vq, 0);
    for (int i = 0; i < NOTIFIES; ++i) virtio_write32(base, 0x050, 0);
    int64_t len = virtio_wait_used(base, &vq, 100000);

    /* A descriptor loop, notified too. */
    vq.desc[0] = (struct virtq_desc){(uint64_t)&req, sizeof(req), VIRTQ_DESC_F_NEXT, 1};
    vq.desc[1] = (struct virtq_desc){(uint64_t)data, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 0};
    virtio_submit(base, &vq, 0);
    for (int i = 0; i < NOTIFIES; ++i) virtio_write32(base, 0x050, 0);

    /* Reset the device mid-flight and bring it back. */
    virtio_write32(base, 0x070, 0);
    int reinit = virtio_init(base, 2, &vq);

    /* MMIO nobody owns (beside the device, and far above RAM); ports
     * nobody listens on. */
    mmio_write32(base + 0x10000, 0xdeadbeef);
    (void)mmio_read32(base + 0x10000);
    mmio_write32(0xfeb00000ull, 0x12345678);
    (void)mmio_read32(0xfeb00000ull);
    outb(0x1234, 0x5a);
    (void)inb(0x99);

    /* A burst on the console. */
    for (int i = 0; i < FLOOD_BYTES; ++i) serial_putc('#');
    serial_puts("\nstorm: round ");
    serial_put_dec(round);
    serial_puts(len >= 0 && status == 0 && reinit == 0 ? " ok\n" : " device failed\n");
  }
}
