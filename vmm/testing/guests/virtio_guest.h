/* A minimal polling virtio-mmio (v2) driver for sbx test guests: one split
 * virtqueue of 8 descriptors, no interrupts (the guest runs with IF=0).
 * Reference: virtio 1.2 §2.7 (split virtqueues), §4.2.2 (MMIO registers),
 * §3.1.1 (driver initialization). */
#ifndef SBX_VMM_TESTING_GUESTS_VIRTIO_GUEST_H_
#define SBX_VMM_TESTING_GUESTS_VIRTIO_GUEST_H_

#include <stdint.h>

#include "guest.h"

#define VQ_SIZE 8
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2

/* A virtio-blk request header (§5.2.6): type 0 read, 1 write. */
struct blk_req {
  uint32_t type;
  uint32_t reserved;
  uint64_t sector;
};

struct virtq_desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};

struct virtq {
  struct virtq_desc desc[VQ_SIZE] __attribute__((aligned(16)));
  struct {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[VQ_SIZE];
  } avail __attribute__((aligned(2)));
  struct {
    uint16_t flags;
    uint16_t idx;
    struct {
      uint32_t id;
      uint32_t len;
    } ring[VQ_SIZE];
  } used __attribute__((aligned(4)));
  uint16_t last_used;
};

/* Finds the n-th "virtio_mmio.device=SIZE@ADDR:IRQ" on the command line;
 * returns its address or 0. */
uint64_t virtio_find_device(const char* cmdline, int n);

/* Resets the device at `base`, checks it is a virtio-mmio v2 device of type
 * `device_id`, negotiates VERSION_1 only, sets up queue 0 on `vq`, and sets
 * DRIVER_OK. Returns 0 on success or a negative step number on failure. */
int virtio_init(uint64_t base, uint32_t device_id, struct virtq* vq);

/* As virtio_init, for a device with `nqueues` queues: queue i on vqs[i]. */
int virtio_init_queues(uint64_t base, uint32_t device_id, struct virtq** vqs,
                       int nqueues);

/* Publishes head descriptor `head` on the avail ring and kicks queue 0. */
void virtio_submit(uint64_t base, struct virtq* vq, uint16_t head);
/* The same for queue `queue`. */
void virtio_submit_queue(uint64_t base, struct virtq* vq, uint32_t queue,
                         uint16_t head);

/* Polls for the next used element; returns its length, or -1 if none came
 * within `polls` tries. Each try reads the device's InterruptStatus
 * register: an exit to the VMM, so a polling guest never monopolizes its
 * CPU (on an emulated KVM host a guest loop that never exits can starve the
 * host thread that would answer it). */
int64_t virtio_wait_used(uint64_t base, struct virtq* vq, uint64_t polls);
/* The same, also giving the used element's head index in *id. */
int64_t virtio_wait_used_id(uint64_t base, struct virtq* vq, uint64_t polls,
                            uint16_t* id);

uint32_t virtio_read32(uint64_t base, uint32_t offset);
void virtio_write32(uint64_t base, uint32_t offset, uint32_t value);

#endif
