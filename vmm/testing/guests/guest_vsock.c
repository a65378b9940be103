/* Drives virtio-vsock (virtio 1.2 §5.10) through a minimal polling driver:
 * connects to host port 1024, sends a message, reads back its echo, then
 * closes cleanly (SHUTDOWN both ways, answered by the host's RST). Reports
 * each step on the serial console. */
#include "virtio_guest.h"

#define DEVICE_ID_VSOCK 19
#define HOST_CID 2
#define HOST_PORT 1024
#define GUEST_PORT 5555
#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define HDR_SIZE 44
#define RX_BUF 512
/* Polls (each an exit) before a packet counts as not coming. */
#define POLLS 400000ull

struct vsock_hdr {
  uint64_t src_cid;
  uint64_t dst_cid;
  uint32_t src_port;
  uint32_t dst_port;
  uint32_t len;
  uint16_t type;
  uint16_t op;
  uint32_t flags;
  uint32_t buf_alloc;
  uint32_t fwd_cnt;
} __attribute__((packed));

static struct virtq rxq __attribute__((aligned(4096)));
static struct virtq txq __attribute__((aligned(4096)));
static struct virtq evq __attribute__((aligned(4096)));
static uint8_t rx_bufs[VQ_SIZE][RX_BUF] __attribute__((aligned(64)));
static uint8_t tx_buf[HDR_SIZE + 64] __attribute__((aligned(64)));
static uint32_t event_buf;
static uint64_t base;
static uint64_t cid;
static uint32_t received;  /* payload bytes taken: our fwd_cnt */

static const char message[] = "hello from the vsock guest";
#define MESSAGE_LEN (sizeof(message) - 1)

static void post_rx(uint16_t i) {
  rxq.desc[i].addr = (uint64_t)rx_bufs[i];
  rxq.desc[i].len = RX_BUF;
  rxq.desc[i].flags = VIRTQ_DESC_F_WRITE;
  rxq.desc[i].next = 0;
  virtio_submit_queue(base, &rxq, 0, i);
}

/* Sends one packet to the host; returns 0 once the device used it. */
static int vs_send(uint16_t op, uint32_t flags, const char* data, uint32_t len) {
  struct vsock_hdr* h = (struct vsock_hdr*)tx_buf;
  h->src_cid = cid;
  h->dst_cid = HOST_CID;
  h->src_port = GUEST_PORT;
  h->dst_port = HOST_PORT;
  h->len = len;
  h->type = 1; /* STREAM */
  h->op = op;
  h->flags = flags;
  h->buf_alloc = VQ_SIZE * (RX_BUF - HDR_SIZE);
  h->fwd_cnt = received;
  for (uint32_t i = 0; i < len; ++i) tx_buf[HDR_SIZE + i] = (uint8_t)data[i];
  txq.desc[0].addr = (uint64_t)tx_buf;
  txq.desc[0].len = HDR_SIZE + len;
  txq.desc[0].flags = 0;
  txq.desc[0].next = 0;
  virtio_submit_queue(base, &txq, 1, 0);
  return virtio_wait_used(base, &txq, POLLS) < 0 ? -1 : 0;
}

/* Waits for the next packet; copies its header to *out and its payload to
 * data (at most cap bytes). Returns the payload length, or -1. */
static int64_t vs_recv(struct vsock_hdr* out, uint8_t* data, uint32_t cap) {
  uint16_t id = 0;
  int64_t len = virtio_wait_used_id(base, &rxq, POLLS, &id);
  if (len < HDR_SIZE || id >= VQ_SIZE) return -1;
  const struct vsock_hdr* h = (const struct vsock_hdr*)rx_bufs[id];
  out->src_port = h->src_port;
  out->dst_port = h->dst_port;
  out->len = h->len;
  out->op = h->op;
  out->flags = h->flags;
  uint32_t n = h->len;
  if (n > (uint32_t)(len - HDR_SIZE)) n = (uint32_t)(len - HDR_SIZE);
  if (n > cap) n = cap;
  for (uint32_t i = 0; i < n; ++i) data[i] = rx_bufs[id][HDR_SIZE + i];
  received += h->len;
  post_rx(id);
  return n;
}

static void say(const char* what, uint64_t value) {
  serial_puts("vsock: ");
  serial_puts(what);
  serial_put_dec(value);
  serial_puts("\n");
}

void guest_main(const struct hvm_start_info* info) {
  for (int n = 0; n < 16; ++n) {
    uint64_t b = virtio_find_device((const char*)info->cmdline_paddr, n);
    if (!b) break;
    if (virtio_read32(b, 0x008) == DEVICE_ID_VSOCK) {
      base = b;
      break;
    }
  }
  if (!base) {
    serial_puts("vsock: no device\n");
    return;
  }
  struct virtq* vqs[3] = {&rxq, &txq, &evq};
  int r = virtio_init_queues(base, DEVICE_ID_VSOCK, vqs, 3);
  if (r) {
    say("init failed at step ", (uint64_t)-r);
    return;
  }
  cid = (uint64_t)virtio_read32(base, 0x100) |
        ((uint64_t)virtio_read32(base, 0x104) << 32);
  say("cid=", cid);
  for (uint16_t i = 0; i < VQ_SIZE; ++i) post_rx(i);
  evq.desc[0].addr = (uint64_t)&event_buf;
  evq.desc[0].len = sizeof(event_buf);
  evq.desc[0].flags = VIRTQ_DESC_F_WRITE;
  virtio_submit_queue(base, &evq, 2, 0);

  struct vsock_hdr h;
  h.op = 0;
  uint8_t echo[64];
  if (vs_send(OP_REQUEST, 0, 0, 0) != 0) {
    serial_puts("vsock: request not taken\n");
    return;
  }
  if (vs_recv(&h, echo, sizeof(echo)) < 0 || h.op != OP_RESPONSE) {
    say("no response; op=", h.op);
    return;
  }
  serial_puts("vsock: connected\n");
  if (vs_send(OP_RW, 0, message, MESSAGE_LEN) != 0) {
    serial_puts("vsock: data not taken\n");
    return;
  }
  uint32_t got = 0;
  while (got < MESSAGE_LEN) {
    int64_t n = vs_recv(&h, echo + got, (uint32_t)(sizeof(echo) - got));
    if (n < 0) {
      say("echo stopped after ", got);
      return;
    }
    if (h.op == OP_RW) got += (uint32_t)n;
    else if (h.op != 6) { /* CREDIT_UPDATE is fine; anything else is not */
      say("unexpected op ", h.op);
      return;
    }
  }
  int same = 1;
  for (uint32_t i = 0; i < MESSAGE_LEN; ++i) same &= echo[i] == (uint8_t)message[i];
  serial_puts(same ? "vsock: echo matches\n" : "vsock: echo MISMATCH\n");
  /* §5.10.6.5: a clean close is SHUTDOWN both ways, answered by RST. */
  if (vs_send(OP_SHUTDOWN, 3, 0, 0) != 0) return;
  for (int i = 0; i < 8; ++i) {
    if (vs_recv(&h, echo, sizeof(echo)) < 0) break;
    if (h.op == OP_RST) {
      serial_puts("vsock: closed by rst\n");
      break;
    }
  }
  serial_puts("vsock: done\n");
}
