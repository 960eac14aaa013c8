/* Drives virtio-blk from CPL3 by polling: write, read back, flush, get-ID,
 * an out-of-range read, then a write to a second, read-only disk. */
#include "rt/rt.h"

struct blk_req { uint32_t type, reserved; uint64_t sector; };
static struct vq q0, q1;
static uint8_t wbuf[4096] __attribute__((aligned(4096)));
static uint8_t rbuf[4096] __attribute__((aligned(4096)));
static struct blk_req hdr;
static volatile uint8_t status;

static int request(struct vq *q, uint32_t type, uint64_t sector, void *data, uint32_t len, int device_writes) {
    hdr.type = type; hdr.reserved = 0; hdr.sector = sector;
    status = 0xff;
    q->desc[0] = (struct vq_desc){ (uint64_t)&hdr, 16, VQ_NEXT, 1 };
    if (len) {
        q->desc[1] = (struct vq_desc){ (uint64_t)data, len, VQ_NEXT | (device_writes ? VQ_WRITE : 0), 2 };
        q->desc[2] = (struct vq_desc){ (uint64_t)&status, 1, VQ_WRITE, 0 };
    } else {
        q->desc[1] = (struct vq_desc){ (uint64_t)&status, 1, VQ_WRITE, 0 };
    }
    vq_kick(q, 0);
    if (vq_wait(q, 1ull << 32) < 0) return -1;
    return status;
}

static void report(const char *what, int v) { puts_(what); putc_(' '); puthex((uint64_t)v & 0xff, 2); putc_('\n'); }

int main(void) {
    struct vdev rw, ro;
    if (vdev_find(&rw, 2, 0) || vdev_init(&rw, (1 << 9) | (1 << 13) | (1 << 14)) || vq_setup(&rw, &q0, 0)) { puts_("BLK-NODEV\n"); return 0; }
    vdev_driver_ok(&rw);
    uint64_t capacity = (uint64_t)mmio_read32(rw.base + 0x100) | (uint64_t)mmio_read32(rw.base + 0x104) << 32;
    puts_("BLK-CAPACITY "); putdec(capacity); putc_('\n');
    for (int i = 0; i < 4096; i++) wbuf[i] = (uint8_t)(i * 7 + 3);
    report("BLK-WRITE", request(&q0, 1, 8, wbuf, 4096, 0));
    report("BLK-READ", request(&q0, 0, 8, rbuf, 4096, 1));
    puts_(memcmp(wbuf, rbuf, 4096) ? "BLK-COMPARE BAD\n" : "BLK-COMPARE OK\n");
    report("BLK-FLUSH", request(&q0, 4, 0, 0, 0, 0));
    memset(rbuf, 0, 32);
    report("BLK-GETID", request(&q0, 8, 0, rbuf, 20, 1));
    puts_("BLK-ID "); puts_((const char *)rbuf); putc_('\n');
    report("BLK-RANGE", request(&q0, 0, capacity, rbuf, 512, 1));
    /* write-zeroes over sectors 16-23 and discard of 24-31, both first filled */
    static struct { uint64_t sector; uint32_t count, flags; } seg;
    report("BLK-FILL", request(&q0, 1, 16, wbuf, 4096, 0) | request(&q0, 1, 24, wbuf, 4096, 0));
    seg.sector = 16; seg.count = 8; seg.flags = 0;
    report("BLK-WRITE-ZEROES", request(&q0, 13, 0, &seg, sizeof seg, 0));
    seg.sector = 24; seg.count = 8; seg.flags = 0;
    report("BLK-DISCARD", request(&q0, 11, 0, &seg, sizeof seg, 0));
    report("BLK-READ-ZEROES", request(&q0, 0, 16, rbuf, 4096, 1));
    int zero = 1;
    for (int i = 0; i < 4096; i++) zero &= rbuf[i] == 0;
    puts_(zero ? "BLK-ZEROED OK\n" : "BLK-ZEROED BAD\n");
    report("BLK-UNSUPPORTED", request(&q0, 99, 0, 0, 0, 0));
    /* One segment is advertised (max_discard_seg, max_write_zeroes_seg):
     * two are refused, and so is write-zeroes beyond max_write_zeroes_sectors. */
    static struct { uint64_t sector; uint32_t count, flags; } two[2] = { { 16, 8, 0 }, { 16, 16, 0 } };
    report("BLK-DISCARD-2SEG", request(&q0, 11, 0, two, sizeof two, 0));
    report("BLK-WRITE-ZEROES-2SEG", request(&q0, 13, 0, two, sizeof two, 0));
    uint32_t max_zeroes = mmio_read32(rw.base + 0x100 + 0x30);
    puts_("BLK-MAX-WRITE-ZEROES "); putdec(max_zeroes); putc_('\n');
    seg.sector = 64; seg.count = 4096; seg.flags = 0; /* 2 MiB */
    report("BLK-WRITE-ZEROES-BIG", request(&q0, 13, 0, &seg, sizeof seg, 0));
    seg.sector = 64; seg.count = max_zeroes; seg.flags = 0;
    report("BLK-WRITE-ZEROES-MAX", request(&q0, 13, 0, &seg, sizeof seg, 0));
    if (vdev_find(&ro, 2, 1) == 0 && vdev_init(&ro, 1 << 5) == 0 && vq_setup(&ro, &q1, 0) == 0) {
        vdev_driver_ok(&ro);
        mmio_write32(ro.base + 0x14, 0);
        report("BLK-RO-FEATURE", (mmio_read32(ro.base + 0x10) >> 5) & 1);
        report("BLK-RO-WRITE", request(&q1, 1, 0, wbuf, 512, 0));
        report("BLK-RO-READ", request(&q1, 0, 0, rbuf, 512, 1));
    }
    puts_("BLK-DONE\n");
    return 0;
}
