/* Reads 64 bytes from virtio-rng from CPL3 and prints them in hex. */
#include "rt/rt.h"
static struct vq q;
static uint8_t buf[64] __attribute__((aligned(64)));

int main(void) {
    struct vdev d;
    if (vdev_find(&d, 4, 0) || vdev_init(&d, 0) || vq_setup(&d, &q, 0)) { puts_("RNG-NODEV\n"); return 0; }
    vdev_driver_ok(&d);
    q.desc[0] = (struct vq_desc){ (uint64_t)buf, sizeof buf, VQ_WRITE, 0 };
    vq_kick(&q, 0);
    int64_t n = vq_wait(&q, 1ull << 32);
    puts_("RNG "); putdec((uint64_t)n); putc_(' ');
    for (int i = 0; i < 64; i++) puthex(buf[i], 2);
    putc_('\n');
    return 0;
}
