#include "virtio_guest.h"

/* Register offsets (virtio 1.2 §4.2.2). */
#define REG_MAGIC 0x000
#define REG_VERSION 0x004
#define REG_DEVICE_ID 0x008
#define REG_DEVICE_FEATURES 0x010
#define REG_DEVICE_FEATURES_SEL 0x014
#define REG_DRIVER_FEATURES 0x020
#define REG_DRIVER_FEATURES_SEL 0x024
#define REG_QUEUE_SEL 0x030
#define REG_QUEUE_NUM_MAX 0x034
#define REG_QUEUE_NUM 0x038
#define REG_QUEUE_READY 0x044
#define REG_QUEUE_NOTIFY 0x050
#define REG_STATUS 0x070
#define REG_QUEUE_DESC_LOW 0x080
#define REG_QUEUE_DESC_HIGH 0x084
#define REG_QUEUE_DRIVER_LOW 0x090
#define REG_QUEUE_DRIVER_HIGH 0x094
#define REG_QUEUE_DEVICE_LOW 0x0a0
#define REG_QUEUE_DEVICE_HIGH 0x0a4

#define STATUS_ACKNOWLEDGE 1
#define STATUS_DRIVER 2
#define STATUS_DRIVER_OK 4
#define STATUS_FEATURES_OK 8

uint32_t virtio_read32(uint64_t base, uint32_t offset) {
  return mmio_read32(base + offset);
}

void virtio_write32(uint64_t base, uint32_t offset, uint32_t value) {
  mmio_write32(base + offset, value);
}

static uint64_t parse_hex(const char** p) {
  uint64_t v = 0;
  for (;;) {
    char c = **p;
    if (c >= '0' && c <= '9') v = v * 16 + (uint64_t)(c - '0');
    else if (c >= 'a' && c <= 'f') v = v * 16 + (uint64_t)(c - 'a' + 10);
    else break;
    ++*p;
  }
  return v;
}

uint64_t virtio_find_device(const char* cmdline, int n) {
  static const char key[] = "virtio_mmio.device=";
  for (const char* p = cmdline; *p; ++p) {
    int i = 0;
    while (key[i] && p[i] == key[i]) ++i;
    if (key[i]) continue;
    const char* at = p + i;
    while (*at && *at != '@') ++at;
    if (at[0] != '@' || at[1] != '0' || at[2] != 'x') continue;
    if (n-- > 0) continue;
    const char* hex = at + 3;
    return parse_hex(&hex);
  }
  return 0;
}

int virtio_init_queues(uint64_t base, uint32_t device_id, struct virtq** vqs,
                       int nqueues) {
  if (virtio_read32(base, REG_MAGIC) != 0x74726976) return -1;  /* "virt" */
  if (virtio_read32(base, REG_VERSION) != 2) return -2;
  if (virtio_read32(base, REG_DEVICE_ID) != device_id) return -3;
  virtio_write32(base, REG_STATUS, 0);  /* reset */
  virtio_write32(base, REG_STATUS, STATUS_ACKNOWLEDGE);
  virtio_write32(base, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
  virtio_write32(base, REG_DEVICE_FEATURES_SEL, 1);
  if (!(virtio_read32(base, REG_DEVICE_FEATURES) & 1)) return -4;  /* VERSION_1 */
  virtio_write32(base, REG_DRIVER_FEATURES_SEL, 0);
  virtio_write32(base, REG_DRIVER_FEATURES, 0);
  virtio_write32(base, REG_DRIVER_FEATURES_SEL, 1);
  virtio_write32(base, REG_DRIVER_FEATURES, 1);
  virtio_write32(base, REG_STATUS,
                 STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
  if (!(virtio_read32(base, REG_STATUS) & STATUS_FEATURES_OK)) return -5;

  for (int q = 0; q < nqueues; ++q) {
    struct virtq* vq = vqs[q];
    uint8_t* raw = (uint8_t*)vq;
    for (uint64_t i = 0; i < sizeof(*vq); ++i) raw[i] = 0;
    virtio_write32(base, REG_QUEUE_SEL, (uint32_t)q);
    if (virtio_read32(base, REG_QUEUE_NUM_MAX) < VQ_SIZE) return -6;
    virtio_write32(base, REG_QUEUE_NUM, VQ_SIZE);
    uint64_t desc = (uint64_t)vq->desc, avail = (uint64_t)&vq->avail,
             used = (uint64_t)&vq->used;
    virtio_write32(base, REG_QUEUE_DESC_LOW, (uint32_t)desc);
    virtio_write32(base, REG_QUEUE_DESC_HIGH, (uint32_t)(desc >> 32));
    virtio_write32(base, REG_QUEUE_DRIVER_LOW, (uint32_t)avail);
    virtio_write32(base, REG_QUEUE_DRIVER_HIGH, (uint32_t)(avail >> 32));
    virtio_write32(base, REG_QUEUE_DEVICE_LOW, (uint32_t)used);
    virtio_write32(base, REG_QUEUE_DEVICE_HIGH, (uint32_t)(used >> 32));
    virtio_write32(base, REG_QUEUE_READY, 1);
  }
  virtio_write32(base, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER |
                                       STATUS_FEATURES_OK | STATUS_DRIVER_OK);
  return 0;
}

int virtio_init(uint64_t base, uint32_t device_id, struct virtq* vq) {
  return virtio_init_queues(base, device_id, &vq, 1);
}

void virtio_submit_queue(uint64_t base, struct virtq* vq, uint32_t queue,
                         uint16_t head) {
  volatile uint16_t* idx = &vq->avail.idx;
  vq->avail.ring[*idx % VQ_SIZE] = head;
  /* The ring entry must be visible before the index (§2.7.13); x86 keeps
   * stores in order, the compiler must too. */
  __asm__ volatile("" ::: "memory");
  *idx = (uint16_t)(*idx + 1);
  __asm__ volatile("mfence" ::: "memory");
  virtio_write32(base, REG_QUEUE_NOTIFY, queue);
}

void virtio_submit(uint64_t base, struct virtq* vq, uint16_t head) {
  virtio_submit_queue(base, vq, 0, head);
}

int64_t virtio_wait_used_id(uint64_t base, struct virtq* vq, uint64_t polls,
                            uint16_t* id) {
  volatile uint16_t* used_idx = &vq->used.idx;
  for (uint64_t i = 0; i < polls; ++i) {
    (void)virtio_read32(base, 0x060);  /* InterruptStatus: an MMIO exit */
    if (*used_idx != vq->last_used) {
      __asm__ volatile("" ::: "memory");
      uint32_t len = vq->used.ring[vq->last_used % VQ_SIZE].len;
      if (id) *id = (uint16_t)vq->used.ring[vq->last_used % VQ_SIZE].id;
      vq->last_used = (uint16_t)(vq->last_used + 1);
      return len;
    }
    __asm__ volatile("pause");
  }
  return -1;
}

int64_t virtio_wait_used(uint64_t base, struct virtq* vq, uint64_t polls) {
  return virtio_wait_used_id(base, vq, polls, 0);
}
