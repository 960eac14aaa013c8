/* Probe runtime for C probes (CPL3, polling, no interrupts). */
#ifndef PROBE_RT_H
#define PROBE_RT_H
#include <stdint.h>
#include <stddef.h>

#define COM1 0x3f8

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "d"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "d"(port)); return v; }
static inline uint32_t mmio_read32(uint64_t a) { return *(volatile uint32_t *)a; }
static inline void mmio_write32(uint64_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static inline uint64_t rdtsc(void) { uint32_t lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return (uint64_t)hi << 32 | lo; }
static inline void barrier(void) { __asm__ volatile("mfence" ::: "memory"); }

void putc_(char c);
void puts_(const char *s);
void puthex(uint64_t v, int digits);
void putdec(uint64_t v);
void reset(void) __attribute__((noreturn));
/* The kernel command line from the PVH start_info ("" if none). */
const char *rt_cmdline(void);
int has_word(const char *line, const char *word);
/* The decimal value of a KEY=N word of the line, or `fallback`. */
uint64_t word_value(const char *line, const char *key, uint64_t fallback);
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);

/* A minimal virtio-mmio (version 2, or 1 for QEMU's legacy default) driver. */
struct vdev { uint64_t base; uint32_t version; };
struct vq_desc { uint64_t addr; uint32_t len; uint16_t flags; uint16_t next; };
#define VQ_SIZE 128
struct vq {
    struct vq_desc desc[VQ_SIZE] __attribute__((aligned(4096)));
    struct { uint16_t flags, idx, ring[VQ_SIZE], used_event; } avail __attribute__((aligned(4096)));
    struct { uint16_t flags, idx; struct { uint32_t id, len; } ring[VQ_SIZE]; uint16_t avail_event; } used __attribute__((aligned(4096)));
    uint16_t next_avail, last_used;
    struct vdev *dev;
    uint32_t index;
};
#define VQ_NEXT 1
#define VQ_WRITE 2
#define VQ_INDIRECT 4

/* Finds the n-th device of `type` (Skiff's and QEMU microvm's windows). */
int vdev_find(struct vdev *d, uint32_t type, int nth);
/* Negotiates features (VERSION_1 plus `features`); 0 on success. */
int vdev_init(struct vdev *d, uint64_t features);
int vq_setup(struct vdev *d, struct vq *q, uint32_t index);
void vdev_driver_ok(struct vdev *d);
uint32_t vdev_status(struct vdev *d);
/* Makes chain `head` available and notifies. */
void vq_kick(struct vq *q, uint16_t head);
/* Polls until the device returns a chain (or `spins` run out: -1). Returns its used length. */
int64_t vq_wait(struct vq *q, uint64_t spins);
#endif
