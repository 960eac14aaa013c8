/* The deterministic machine's probe (skiff record / replay): programs the
 * PIC and the PIT, turns interrupts on at CPL3 (rt's #GP handler does the
 * sti), and folds into one hash everything that depends on where the
 * timer's and the console's interrupts land: spin loops that make no
 * exits, the PIT's count, the bytes typed. Prints REPLAY-START, a line
 * per round, READY (then reads the console until 'q', a line per byte),
 * and REPLAY-DONE with the hash and the interrupt counts. With a disk, it
 * reads its first 4 KiB, writes the hash at sector 8 and reads it back;
 * with virtio-rng, it prints 64 bytes of entropy. Command line:
 * pit=N (the PIT's count, default 2000), rounds=N (8), spin=N (2000000
 * iterations per round), noinput (no console phase). */
#include "rt/rt.h"

extern volatile uint64_t irq_count[16];
static uint64_t h = 1469598103934665603ull;
static void mix(uint64_t v) { h ^= v; h *= 1099511628211ull; }
static void sti_(void) { __asm__ volatile("sti" ::: "memory"); }

struct blk_req { uint32_t type, reserved; uint64_t sector; };
static struct vq bq, rq;
static uint8_t buf[4096] __attribute__((aligned(4096)));
static struct blk_req hdr;
static volatile uint8_t status;

/* One virtio-blk request (type 0 read, 1 write) of `buf`; its status. */
static int request(uint32_t type, uint64_t sector) {
    hdr.type = type; hdr.reserved = 0; hdr.sector = sector;
    status = 0xff;
    bq.desc[0] = (struct vq_desc){ (uint64_t)&hdr, 16, VQ_NEXT, 1 };
    bq.desc[1] = (struct vq_desc){ (uint64_t)buf, sizeof buf, VQ_NEXT | (type == 0 ? VQ_WRITE : 0), 2 };
    bq.desc[2] = (struct vq_desc){ (uint64_t)&status, 1, VQ_WRITE, 0 };
    vq_kick(&bq, 0);
    if (vq_wait(&bq, 1ull << 32) < 0) return -1;
    return status;
}

static void counts(void) {
    puts_(" h="); puthex(h, 16);
    puts_(" irq0="); putdec(irq_count[0]);
    puts_(" irq4="); putdec(irq_count[4]);
    putc_('\n');
}

int main(void) {
    const char *cmd = rt_cmdline();
    uint64_t pit = word_value(cmd, "pit", 2000), rounds = word_value(cmd, "rounds", 8), spin = word_value(cmd, "spin", 2000000);
    /* The 8259 pair: edge, vectors 32 and 40, the slave on IRQ 2; IRQs 0, 2, 4 unmasked. */
    outb(0x20, 0x11); outb(0x21, 0x20); outb(0x21, 0x04); outb(0x21, 0x01);
    outb(0xa0, 0x11); outb(0xa1, 0x28); outb(0xa1, 0x02); outb(0xa1, 0x01);
    outb(0x21, (uint8_t)~(1 | 4 | 16)); outb(0xa1, 0xff);
    /* PIT channel 0: rate generator, lo/hi count. */
    outb(0x43, 0x34); outb(0x40, pit & 0xff); outb(0x40, (pit >> 8) & 0xff);
    outb(COM1 + 1, 0x01); /* the UART's receive interrupt */
    sti_();
    puts_("REPLAY-START\n");
    for (uint64_t r = 0; r < rounds; r++) {
        for (uint64_t i = 0; i < spin; i++) mix(i ^ irq_count[0]); /* memory only: no exits */
        outb(0x43, 0x00); /* latch channel 0 */
        uint64_t lo = inb(0x40), hi = inb(0x40);
        mix(lo | hi << 8);
        puts_("round "); putdec(r); puts_(" pit="); putdec(lo | hi << 8);
        counts();
    }
    struct vdev d;
    if (!vdev_find(&d, 2, 0) && !vdev_init(&d, 0) && !vq_setup(&d, &bq, 0)) {
        vdev_driver_ok(&d);
        /* the disk's first 4 KiB, then 4 KiB of the hash written at sector 8 and read back */
        int r = request(0, 0);
        for (int i = 0; i < 4096; i++) mix(buf[i]);
        for (int i = 0; i < 4096; i++) buf[i] = (uint8_t)(h >> (8 * (i & 7)));
        int w = request(1, 8);
        memset(buf, 0, sizeof buf);
        int b = request(0, 8);
        for (int i = 0; i < 4096; i++) mix(buf[i]);
        puts_("blk read="); putdec((uint64_t)r); puts_(" write="); putdec((uint64_t)w); puts_(" readback="); putdec((uint64_t)b);
        counts();
    }
    if (!vdev_find(&d, 4, 0) && !vdev_init(&d, 0) && !vq_setup(&d, &rq, 0)) {
        vdev_driver_ok(&d);
        rq.desc[0] = (struct vq_desc){ (uint64_t)buf, 64, VQ_WRITE, 0 };
        vq_kick(&rq, 0);
        int64_t n = vq_wait(&rq, 1ull << 32);
        puts_("rng "); putdec((uint64_t)n); putc_(' ');
        for (int i = 0; i < 64; i++) { puthex(buf[i], 2); mix(buf[i]); }
        counts();
    }
    if (!has_word(cmd, "noinput")) {
        puts_("READY\n");
        for (;;) {
            if (!(inb(COM1 + 5) & 1)) { mix(irq_count[0]); continue; }
            uint8_t c = inb(COM1);
            mix(c);
            puts_("got "); puthex(c, 2);
            counts();
            if (c == 'q') break;
        }
    }
    puts_("REPLAY-DONE");
    counts();
    return 0;
}
