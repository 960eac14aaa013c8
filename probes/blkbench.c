/* virtio-blk throughput probe for bench/virtio. Command line words:
 *   read|write  seq|rand  bs=BYTES  qd=N  every=N
 * Keeps N requests in flight, polling from CPL3 with interrupts suppressed
 * (VRING_AVAIL_F_NO_INTERRUPT), and prints "." after every `every`
 * completions; the host times the dots. Runs until the VM is killed.
 * Data buffers live at 64 MiB and up (the guest needs 64 MiB + qd * bs). */
#include "rt/rt.h"

struct blk_req { uint32_t type, reserved; uint64_t sector; };
static struct vq q;
static struct blk_req hdr[VQ_SIZE / 3];
static volatile uint8_t status[VQ_SIZE / 3];


static uint64_t rng_state = 88172645463325252ull;
static uint64_t next_random(void) { rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17; return rng_state; }

int main(void) {
    const char *cmd = rt_cmdline();
    int write = has_word(cmd, "write"), rnd = has_word(cmd, "rand");
    uint64_t bs = word_value(cmd, "bs", 4096), qd = word_value(cmd, "qd", 1), every = word_value(cmd, "every", 1000);
    if (qd < 1 || qd > VQ_SIZE / 3) qd = 1;
    struct vdev d;
    if (vdev_find(&d, 2, 0) || vdev_init(&d, 0) || vq_setup(&d, &q, 0)) { puts_("NODEV\n"); return 0; }
    vdev_driver_ok(&d);
    q.avail.flags = 1; /* no interrupts: we poll */
    uint64_t capacity = (uint64_t)mmio_read32(d.base + 0x100) | (uint64_t)mmio_read32(d.base + 0x104) << 32;
    uint64_t sectors = bs / 512, slots = capacity / sectors, seq = 0;
    for (uint64_t s = 0; s < qd; s++) {
        q.desc[3 * s] = (struct vq_desc){ (uint64_t)&hdr[s], 16, VQ_NEXT, (uint16_t)(3 * s + 1) };
        q.desc[3 * s + 1] = (struct vq_desc){ 0x4000000 + s * bs, (uint32_t)bs, (uint16_t)(VQ_NEXT | (write ? 0 : VQ_WRITE)), (uint16_t)(3 * s + 2) };
        q.desc[3 * s + 2] = (struct vq_desc){ (uint64_t)&status[s], 1, VQ_WRITE, 0 };
    }
    puts_("BENCH-START\n");
    for (uint64_t s = 0; s < qd; s++) {
        hdr[s] = (struct blk_req){ write ? 1u : 0u, 0, (rnd ? next_random() % slots : seq++ % slots) * sectors };
        q.avail.ring[q.next_avail++ % VQ_SIZE] = (uint16_t)(3 * s);
    }
    barrier();
    q.avail.idx = q.next_avail;
    barrier();
    mmio_write32(d.base + 0x50, 0);
    uint64_t done = 0;
    for (;;) {
        uint16_t used = *(volatile uint16_t *)&q.used.idx;
        if (used == q.last_used) { __asm__ volatile("pause"); continue; }
        barrier();
        while (q.last_used != used) {
            uint32_t head = q.used.ring[q.last_used++ % VQ_SIZE].id;
            uint32_t s = head / 3;
            if (status[s] != 0) { puts_("IOERR\n"); return 0; }
            hdr[s].sector = (rnd ? next_random() % slots : seq++ % slots) * sectors;
            q.avail.ring[q.next_avail++ % VQ_SIZE] = (uint16_t)head;
            if (++done % every == 0) putc_('.');
        }
        barrier();
        q.avail.idx = q.next_avail;
        barrier();
        mmio_write32(d.base + 0x50, 0);
    }
}
