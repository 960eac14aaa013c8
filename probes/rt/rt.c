#include "rt.h"

extern uint64_t pvh_start_info;

void putc_(char c) { outb(COM1, (uint8_t)c); }
void puts_(const char *s) { while (*s) putc_(*s++); }
void puthex(uint64_t v, int digits) {
    for (int i = digits - 1; i >= 0; i--) putc_("0123456789abcdef"[(v >> (4 * i)) & 0xf]);
}
void putdec(uint64_t v) {
    char b[24]; int n = 0;
    do { b[n++] = '0' + v % 10; v /= 10; } while (v);
    while (n) putc_(b[--n]);
}
void reset(void) { outb(0x64, 0xfe); for (;;) {} }

void *memset(void *d, int c, size_t n) { uint8_t *p = d; while (n--) *p++ = (uint8_t)c; return d; }
void *memcpy(void *d, const void *s, size_t n) { uint8_t *p = d; const uint8_t *q = s; while (n--) *p++ = *q++; return d; }
int memcmp(const void *a, const void *b, size_t n) {
    const uint8_t *p = a, *q = b;
    for (; n; n--, p++, q++) if (*p != *q) return *p - *q;
    return 0;
}

const char *rt_cmdline(void) {
    /* struct hvm_start_info: magic u32 at 0, cmdline_paddr u64 at 24 */
    if (!pvh_start_info || *(uint32_t *)pvh_start_info != 0x336ec578) return "";
    uint64_t p = *(uint64_t *)(pvh_start_info + 24);
    return p ? (const char *)p : "";
}

int has_word(const char *line, const char *word) {
    for (const char *s = line; *s; s++) {
        if (s != line && s[-1] != ' ') continue;
        const char *a = s, *b = word;
        while (*b && *a == *b) { a++; b++; }
        if (!*b && (*a == 0 || *a == ' ' || *a == '=')) return 1;
    }
    return 0;
}

uint64_t word_value(const char *line, const char *key, uint64_t fallback) {
    for (const char *s = line; *s; s++) {
        if (s != line && s[-1] != ' ') continue;
        const char *a = s, *b = key;
        while (*b && *a == *b) { a++; b++; }
        if (*b || *a != '=') continue;
        uint64_t v = 0;
        for (a++; *a >= '0' && *a <= '9'; a++) v = v * 10 + (uint64_t)(*a - '0');
        return v;
    }
    return fallback;
}

#define R(d, off) ((d)->base + (off))

int vdev_find(struct vdev *d, uint32_t type, int nth) {
    static const struct { uint64_t base, stride; } windows[] = { { 0xd0000000, 0x1000 }, { 0xfeb00000, 0x200 } };
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < 24; i++) {
            uint64_t b = windows[w].base + i * windows[w].stride;
            if (mmio_read32(b) != 0x74726976 || mmio_read32(b + 8) != type) continue;
            if (nth-- > 0) continue;
            d->base = b;
            d->version = mmio_read32(b + 4);
            return 0;
        }
    return -1;
}

int vdev_init(struct vdev *d, uint64_t features) {
    mmio_write32(R(d, 0x70), 0);
    mmio_write32(R(d, 0x70), 1 | 2);
    mmio_write32(R(d, 0x14), 1);
    uint64_t offered = (uint64_t)mmio_read32(R(d, 0x10)) << 32;
    mmio_write32(R(d, 0x14), 0);
    offered |= mmio_read32(R(d, 0x10));
    uint64_t want = (features | (1ull << 32)) & offered;
    mmio_write32(R(d, 0x24), 1);
    mmio_write32(R(d, 0x20), (uint32_t)(want >> 32));
    mmio_write32(R(d, 0x24), 0);
    mmio_write32(R(d, 0x20), (uint32_t)want);
    mmio_write32(R(d, 0x70), 1 | 2 | 8);
    return (mmio_read32(R(d, 0x70)) & 8) ? 0 : -1;
}

int vq_setup(struct vdev *d, struct vq *q, uint32_t index) {
    memset(q, 0, sizeof *q);
    q->dev = d;
    q->index = index;
    mmio_write32(R(d, 0x30), index);
    if (mmio_read32(R(d, 0x34)) < VQ_SIZE) return -1;
    mmio_write32(R(d, 0x38), VQ_SIZE);
    mmio_write32(R(d, 0x80), (uint32_t)(uint64_t)q->desc);
    mmio_write32(R(d, 0x84), 0);
    mmio_write32(R(d, 0x90), (uint32_t)(uint64_t)&q->avail);
    mmio_write32(R(d, 0x94), 0);
    mmio_write32(R(d, 0xa0), (uint32_t)(uint64_t)&q->used);
    mmio_write32(R(d, 0xa4), 0);
    mmio_write32(R(d, 0x44), 1);
    return 0;
}

void vdev_driver_ok(struct vdev *d) { mmio_write32(R(d, 0x70), 1 | 2 | 8 | 4); }
uint32_t vdev_status(struct vdev *d) { return mmio_read32(R(d, 0x70)); }

void vq_kick(struct vq *q, uint16_t head) {
    q->avail.ring[q->next_avail % VQ_SIZE] = head;
    barrier();
    q->avail.idx = ++q->next_avail;
    barrier();
    mmio_write32(R(q->dev, 0x50), q->index);
}

int64_t vq_wait(struct vq *q, uint64_t spins) {
    while (*(volatile uint16_t *)&q->used.idx == q->last_used) {
        if (spins-- == 0) return -1;
        __asm__ volatile("pause");
    }
    barrier();
    uint32_t len = q->used.ring[q->last_used % VQ_SIZE].len;
    q->last_used++;
    return len;
}
