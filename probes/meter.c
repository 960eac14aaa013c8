/* A guest whose use is known, for skiffd's metering tests. Command-line
 * words: touch=N writes one byte to each 4 KiB page of N MiB (from 32 MiB
 * up); blkwrite=N writes N 4 KiB blocks to the first disk; blkread=N reads
 * N blocks back; then it prints METER-DONE and either spins at CPL3
 * forever (burn: one vCPU always busy) or halts with no timer (idle). */
#include "rt/rt.h"

struct blk_req { uint32_t type, reserved; uint64_t sector; };
static struct vq q0;
static uint8_t buf[4096] __attribute__((aligned(4096)));
static struct blk_req hdr;
static volatile uint8_t status;

static uint64_t value(const char *line, const char *key) {
    for (const char *p = line; *p; p++) {
        if (p != line && p[-1] != ' ') continue;
        const char *k = key, *q = p;
        while (*k && *q == *k) { k++; q++; }
        if (*k) continue;
        uint64_t v = 0;
        while (*q >= '0' && *q <= '9') v = v * 10 + (uint64_t)(*q++ - '0');
        return v;
    }
    return 0;
}

static int request(uint32_t type, uint64_t sector, int device_writes) {
    hdr.type = type; hdr.reserved = 0; hdr.sector = sector;
    status = 0xff;
    q0.desc[0] = (struct vq_desc){ (uint64_t)&hdr, 16, VQ_NEXT, 1 };
    q0.desc[1] = (struct vq_desc){ (uint64_t)buf, 4096, VQ_NEXT | (device_writes ? VQ_WRITE : 0), 2 };
    q0.desc[2] = (struct vq_desc){ (uint64_t)&status, 1, VQ_WRITE, 0 };
    vq_kick(&q0, 0);
    if (vq_wait(&q0, 1ull << 32) < 0) return -1;
    return status;
}

int main(void) {
    const char *line = rt_cmdline();
    uint64_t mib = value(line, "touch="), writes = value(line, "blkwrite="), reads = value(line, "blkread=");
    for (uint64_t a = 32ull << 20; a < (32ull + mib) << 20; a += 4096) *(volatile uint8_t *)a = 1;
    if (writes || reads) {
        struct vdev d;
        if (vdev_find(&d, 2, 0) || vdev_init(&d, 0) || vq_setup(&d, &q0, 0)) { puts_("METER-NODISK\n"); return 0; }
        vdev_driver_ok(&d);
        for (uint64_t i = 0; i < 4096; i++) buf[i] = (uint8_t)i;
        for (uint64_t i = 0; i < writes; i++) if (request(1, i * 8, 0) != 0) { puts_("METER-IOERROR\n"); return 0; }
        for (uint64_t i = 0; i < reads; i++) if (request(0, i * 8, 1) != 0) { puts_("METER-IOERROR\n"); return 0; }
    }
    puts_("METER-DONE\n");
    if (has_word(line, "burn")) for (;;) __asm__ volatile("" ::: "memory");
    for (;;) __asm__ volatile("hlt");
}
