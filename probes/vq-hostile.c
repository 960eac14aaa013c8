/* A hostile driver: one valid write to sector 0 of disk 0, then one broken
 * chain on the same queue, chosen by a word on the kernel command line:
 *   loop oob-addr huge-len bad-head bad-next bad-indirect nested-indirect
 *   zero-len avail-jump overlap storm
 * Prints the device status afterwards (NEEDS_RESET is 0x40), then checks a
 * second device (virtio-rng) still serves, and prints HOSTILE-DONE. */
#include "rt/rt.h"

struct blk_req { uint32_t type, reserved; uint64_t sector; };
static struct vq q, rq;
static uint8_t data[512] __attribute__((aligned(512)));
static struct blk_req hdr;
static volatile uint8_t status;
static struct vq_desc table[4] __attribute__((aligned(16)));
static uint8_t rbuf[16];

static void valid_write(void) {
    hdr = (struct blk_req){ 1, 0, 0 };
    for (int i = 0; i < 512; i++) data[i] = 0xab;
    q.desc[0] = (struct vq_desc){ (uint64_t)&hdr, 16, VQ_NEXT, 1 };
    q.desc[1] = (struct vq_desc){ (uint64_t)data, 512, VQ_NEXT, 2 };
    q.desc[2] = (struct vq_desc){ (uint64_t)&status, 1, VQ_WRITE, 0 };
    vq_kick(&q, 0);
    vq_wait(&q, 1ull << 30);
    puts_("VALID-WRITE "); puthex(status, 2); putc_('\n');
}

int main(void) {
    const char *cmd = rt_cmdline();
    struct vdev d, r;
    if (vdev_find(&d, 2, 0) || vdev_init(&d, (1 << 28) | (1ull << 29)) || vq_setup(&d, &q, 0)) { puts_("NODEV\n"); return 0; }
    vdev_driver_ok(&d);
    valid_write();
    /* Every broken chain asks the device to write sector 1 if it were obeyed. */
    hdr = (struct blk_req){ 1, 0, 1 };
    q.desc[0] = (struct vq_desc){ (uint64_t)&hdr, 16, VQ_NEXT, 1 };
    q.desc[1] = (struct vq_desc){ (uint64_t)data, 512, VQ_NEXT, 2 };
    q.desc[2] = (struct vq_desc){ (uint64_t)&status, 1, VQ_WRITE, 0 };
    uint16_t head = 0;
    if (has_word(cmd, "loop")) q.desc[1].next = 0; /* 0 -> 1 -> 0 -> ... */
    else if (has_word(cmd, "oob-addr")) q.desc[1].addr = 0x7fff00000000ull;
    else if (has_word(cmd, "huge-len")) q.desc[1].len = 0xfffffff0u;
    else if (has_word(cmd, "bad-head")) head = 0x7fff;
    else if (has_word(cmd, "bad-next")) q.desc[1].next = 0x1234;
    else if (has_word(cmd, "zero-len")) q.desc[1].len = 0;
    else if (has_word(cmd, "overlap")) q.desc[2].addr = (uint64_t)&hdr; /* device would write into its own header */
    else if (has_word(cmd, "bad-indirect") || has_word(cmd, "nested-indirect")) {
        table[0] = (struct vq_desc){ (uint64_t)&hdr, 16, VQ_NEXT, 1 };
        table[1] = (struct vq_desc){ (uint64_t)data, 512, VQ_NEXT, 2 };
        table[2] = (struct vq_desc){ (uint64_t)&status, 1, VQ_WRITE, 0 };
        if (has_word(cmd, "nested-indirect")) table[1] = (struct vq_desc){ (uint64_t)table, 48, VQ_INDIRECT, 0 };
        q.desc[0] = (struct vq_desc){ (uint64_t)table, has_word(cmd, "bad-indirect") ? 47 : 48, VQ_INDIRECT, 0 };
    } else if (has_word(cmd, "avail-jump")) {
        q.avail.ring[q.next_avail % VQ_SIZE] = 0;
        barrier();
        q.next_avail += 1000;
        q.avail.idx = q.next_avail;
        barrier();
        mmio_write32(d.base + 0x50, 0);
        goto wait;
    } else if (has_word(cmd, "storm")) {
        for (int i = 0; i < 200000; i++) mmio_write32(d.base + 0x50, 0);
        puts_("STORM-SENT\n");
        valid_write();
        goto other;
    }
    vq_kick(&q, head);
wait:
    for (uint64_t i = 0; i < (1ull << 26) && !(vdev_status(&d) & 0x40); i++) __asm__ volatile("pause");
    puts_("STATUS "); puthex(vdev_status(&d), 2); putc_('\n');
other:

    if (vdev_find(&r, 4, 0) == 0 && vdev_init(&r, 0) == 0 && vq_setup(&r, &rq, 0) == 0) {
        vdev_driver_ok(&r);
        rq.desc[0] = (struct vq_desc){ (uint64_t)rbuf, sizeof rbuf, VQ_WRITE, 0 };
        vq_kick(&rq, 0);
        puts_(vq_wait(&rq, 1ull << 32) == sizeof rbuf ? "OTHER-DEVICE OK\n" : "OTHER-DEVICE BAD\n");
    }
    puts_("HOSTILE-DONE\n");
    return 0;
}
