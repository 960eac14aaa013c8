/* Changes a known share of the first disk, for bench/backup: writes
 * pseudo-random (incompressible, xorshift64) data into a number of extents
 * at pseudo-random 4 KiB-aligned positions, flushes, prints
 * "BLKWRITE done extents=N bytes=B" and resets (so `skiff run` exits 0).
 * Command line words:
 *   seed=N      the PRNG seed: the same seed gives the same extents and data
 *   extents=N   how many extents (default 36)
 *   permille=N  bytes written in all = disk size * N / 1000 (default 10),
 *               split evenly over the extents, in 4 KiB blocks
 *   list        also prints "BLKWRITE extent START LENGTH" (bytes) for each
 *   stay        idle after the done line instead of resetting (a VM that
 *               has written its share and runs on, for skiffd's tests)
 * The disk is cut into `extents` equal slots and each extent lies at a
 * random place inside its own slot: extents never overlap, never pass the
 * disk's end, and the whole disk is covered. Requests carry up to 1 MiB
 * (size_max) in one segment, QD of them in flight; data buffers live at
 * 64 MiB and up (the guest needs 64 MiB + QD MiB). On a device error it
 * prints "BLKWRITE error ..." instead of the done line. */
#include "rt/rt.h"

#define QD 4
#define BLOCK 4096ull
#define REQ_BLOCKS 256ull /* 1 MiB */
#define BUFFERS 0x4000000ull

struct blk_req { uint32_t type, reserved; uint64_t sector; };
static struct vq q;
static struct blk_req hdr[QD];
static volatile uint8_t status[QD];


static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t xorshift(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return *s = x;
}

static void fail(const char *what, uint64_t v) {
    puts_("BLKWRITE error "); puts_(what); putc_(' '); putdec(v); putc_('\n');
}

/* Submits chain 3*s (its descriptors already filled) and notifies. */
static void submit(uint32_t s) {
    q.avail.ring[q.next_avail++ % VQ_SIZE] = (uint16_t)(3 * s);
    barrier();
    q.avail.idx = q.next_avail;
    barrier();
    mmio_write32(q.dev->base + 0x50, 0);
}

/* Waits for one completion; returns its slot, or -1 on a timeout. */
static int64_t complete(void) {
    for (uint64_t spins = 0; *(volatile uint16_t *)&q.used.idx == q.last_used; spins++) {
        if (spins > (1ull << 34)) return -1;
        __asm__ volatile("pause");
    }
    barrier();
    uint32_t head = q.used.ring[q.last_used++ % VQ_SIZE].id;
    return head / 3;
}

int main(void) {
    const char *cmd = rt_cmdline();
    uint64_t seed = word_value(cmd, "seed", 0);
    uint64_t extents = word_value(cmd, "extents", 36), permille = word_value(cmd, "permille", 10);
    int list = has_word(cmd, "list");
    if (permille > 1000) permille = 1000;
    struct vdev d;
    if (vdev_find(&d, 2, 0) || vdev_init(&d, 1 << 9) || vq_setup(&d, &q, 0)) { puts_("BLKWRITE error nodev 0\n"); return 0; }
    vdev_driver_ok(&d);
    q.avail.flags = 1; /* no interrupts: we poll */
    uint64_t capacity = (uint64_t)mmio_read32(d.base + 0x100) | (uint64_t)mmio_read32(d.base + 0x104) << 32;
    uint64_t blocks = capacity * 512 / BLOCK;
    uint64_t total = capacity * 512 / 1000 * permille / BLOCK; /* in blocks */
    if (total == 0 && permille) total = 1;
    if (extents > total) extents = total;
    if (extents == 0 || blocks == 0) { puts_("BLKWRITE done extents=0 bytes=0\n"); return 0; }

    /* Two streams from the seed: one places the extents, one is the data. */
    uint64_t mix = seed, place = splitmix(&mix), data = splitmix(&mix) | 1;
    uint64_t per = total / extents, extra = total % extents, written = 0;
    for (uint32_t s = 0; s < QD; s++) {
        q.desc[3 * s] = (struct vq_desc){ (uint64_t)&hdr[s], 16, VQ_NEXT, (uint16_t)(3 * s + 1) };
        q.desc[3 * s + 1] = (struct vq_desc){ BUFFERS + s * REQ_BLOCKS * BLOCK, 0, VQ_NEXT, (uint16_t)(3 * s + 2) };
        q.desc[3 * s + 2] = (struct vq_desc){ (uint64_t)&status[s], 1, VQ_WRITE, 0 };
    }
    uint32_t free_slots[QD], nfree = QD, inflight = 0;
    for (uint32_t s = 0; s < QD; s++) free_slots[s] = s;
    uint64_t e = 0, at = 0, left = 0; /* current extent, its next block, blocks left */
    for (;;) {
        while (nfree && (left || e < extents)) {
            if (!left) {
                uint64_t lo = e * blocks / extents, hi = (e + 1) * blocks / extents;
                uint64_t len = per + (e < extra ? 1 : 0);
                if (len > hi - lo) len = hi - lo;
                at = lo + splitmix(&place) % (hi - lo - len + 1);
                left = len;
                if (list) { puts_("BLKWRITE extent "); putdec(at * BLOCK); putc_(' '); putdec(len * BLOCK); putc_('\n'); }
                e++;
                if (!left) continue;
            }
            uint64_t n = left < REQ_BLOCKS ? left : REQ_BLOCKS;
            uint32_t s = free_slots[--nfree];
            uint64_t *p = (uint64_t *)(BUFFERS + s * REQ_BLOCKS * BLOCK);
            for (uint64_t i = 0; i < n * BLOCK / 8; i++) p[i] = xorshift(&data);
            hdr[s] = (struct blk_req){ 1, 0, at * (BLOCK / 512) };
            q.desc[3 * s + 1].len = (uint32_t)(n * BLOCK);
            status[s] = 0xff;
            submit(s);
            inflight++;
            at += n; left -= n; written += n * BLOCK;
        }
        if (!inflight) break;
        int64_t s = complete();
        if (s < 0) { fail("timeout", written); return 0; }
        if (status[s] != 0) { fail("status", status[s]); return 0; }
        free_slots[nfree++] = (uint32_t)s;
        inflight--;
    }
    /* flush: header and status only */
    hdr[0] = (struct blk_req){ 4, 0, 0 };
    status[0] = 0xff;
    q.desc[0] = (struct vq_desc){ (uint64_t)&hdr[0], 16, VQ_NEXT, 2 };
    submit(0);
    int64_t s = complete();
    if (s < 0) { fail("flush-timeout", 0); return 0; }
    if (status[0] != 0) { fail("flush-status", status[0]); return 0; }
    puts_("BLKWRITE done extents="); putdec(extents); puts_(" bytes="); putdec(written); putc_('\n');
    if (has_word(cmd, "stay")) for (;;) __asm__ volatile("hlt");
    return 0;
}
