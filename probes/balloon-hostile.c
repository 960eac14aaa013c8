/* A balloon driver that takes no optional feature: it enables only the two
 * required queues (inflate, deflate), then notifies queues 2 and 3, which do
 * not exist for it. The device must ignore those notifications and go on:
 * an inflate still completes, and a second device (virtio-rng) still serves.
 * With "wait" on the command line it then loops (for a snapshot and
 * restore), notifying 2 and 3 and reading entropy, printing TICK each time.
 * "quiet" leaves out every notify of 2 and 3 (a restore makes its own). */
#include "rt/rt.h"

static struct vq inflate, deflate, rq;
static uint8_t page[4096] __attribute__((aligned(4096)));
static uint32_t pfns[1];
static uint8_t rbuf[16];

static int rng_ok(void) {
    rq.desc[0] = (struct vq_desc){ (uint64_t)rbuf, sizeof rbuf, VQ_WRITE, 0 };
    vq_kick(&rq, 0);
    return vq_wait(&rq, 1ull << 32) == sizeof rbuf;
}

static void notify_missing(struct vdev *b) {
    if (has_word(rt_cmdline(), "quiet")) return;
    mmio_write32(b->base + 0x50, 2);
    mmio_write32(b->base + 0x50, 3);
}

int main(void) {
    struct vdev b, r;
    if (vdev_find(&b, 5, 0) || vdev_init(&b, 0) || vq_setup(&b, &inflate, 0) || vq_setup(&b, &deflate, 1)) {
        puts_("BALLOON-NODEV\n");
        return 0;
    }
    vdev_driver_ok(&b);
    notify_missing(&b);
    pfns[0] = (uint32_t)((uint64_t)page >> 12);
    inflate.desc[0] = (struct vq_desc){ (uint64_t)pfns, sizeof pfns, 0, 0 };
    vq_kick(&inflate, 0);
    puts_(vq_wait(&inflate, 1ull << 32) >= 0 ? "BALLOON-INFLATE OK\n" : "BALLOON-INFLATE BAD\n");
    puts_("STATUS "); puthex(vdev_status(&b), 2); putc_('\n');
    if (vdev_find(&r, 4, 0) || vdev_init(&r, 0) || vq_setup(&r, &rq, 0)) { puts_("RNG-NODEV\n"); return 0; }
    vdev_driver_ok(&r);
    puts_(rng_ok() ? "OTHER-DEVICE OK\n" : "OTHER-DEVICE BAD\n");
    if (has_word(rt_cmdline(), "wait")) {
        for (;;) {
            notify_missing(&b);
            puts_(rng_ok() ? "TICK\n" : "TICK-BAD\n");
            for (uint64_t i = 0; i < (1ull << 24); i++) __asm__ volatile("pause");
        }
    }
    puts_("BALLOON-DONE\n");
    return 0;
}
