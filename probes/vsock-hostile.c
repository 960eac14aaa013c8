/* virtio-vsock from CPL3, polling: a guest that misuses the host side.
 * One mode per run, named on the command line:
 *   flood      300 connections to host port 1234 at once (the cap), then
 *              resets them and connects once more.
 *   full       3 connections to port 1235, whose listener is full, and one
 *              to port 1234 meanwhile; then 3 more to 1235 and idles.
 *   hostclose  20 connections to port 1234 that the host closes; never
 *              answers the host's SHUTDOWN, counts the RSTs that follow.
 *   double     one connection the host closes, then data and a SHUTDOWN in
 *              one batch (the flush fails, then the shutdown runs).
 *   symlink    one connection to port 1236 (a symlink on the host). */
#include "rt/rt.h"

struct hdr {
    uint64_t src_cid, dst_cid;
    uint32_t src_port, dst_port, len;
    uint16_t type, op;
    uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));
enum { REQUEST = 1, RESPONSE = 2, RST = 3, SHUTDOWN = 4, RW = 5 };

static struct vq rxq, txq, evq;
static uint8_t rxbuf[8][4096] __attribute__((aligned(4096)));
static struct { struct hdr h; char data[64]; } txpkt[2];
static uint64_t cid;

static void refill(int i) {
    rxq.desc[i] = (struct vq_desc){ (uint64_t)rxbuf[i], 4096, VQ_WRITE, 0 };
    rxq.avail.ring[rxq.next_avail++ % VQ_SIZE] = (uint16_t)i;
    barrier();
    rxq.avail.idx = rxq.next_avail;
    barrier();
    mmio_write32(rxq.dev->base + 0x50, 0);
}

/* Puts packet `slot` on the tx ring without notifying. */
static void queue(int slot, uint32_t sport, uint32_t dport, uint16_t op, uint32_t flags, const char *data) {
    uint32_t n = 0;
    while (data && data[n]) { txpkt[slot].data[n] = data[n]; n++; }
    txpkt[slot].h = (struct hdr){ cid, 2, sport, dport, n, 1, op, flags, 65536, 0 };
    txq.desc[slot] = (struct vq_desc){ (uint64_t)&txpkt[slot], (uint32_t)(sizeof(struct hdr) + n), 0, 0 };
    txq.avail.ring[txq.next_avail++ % VQ_SIZE] = (uint16_t)slot;
}

/* Notifies and waits until the device has taken all `count` queued packets. */
static void kick(int count) {
    barrier();
    txq.avail.idx = txq.next_avail;
    barrier();
    mmio_write32(txq.dev->base + 0x50, 1);
    for (int i = 0; i < count; i++) vq_wait(&txq, 1ull << 32);
}

static void send(uint32_t sport, uint32_t dport, uint16_t op, uint32_t flags, const char *data) {
    queue(0, sport, dport, op, flags, data);
    kick(1);
}

/* The next packet's header, or 0 if none comes within `cycles` TSC cycles. */
static int receive(struct hdr *out, uint64_t cycles) {
    uint64_t start = rdtsc();
    while (*(volatile uint16_t *)&rxq.used.idx == rxq.last_used)
        if (rdtsc() - start > cycles) return 0;
    barrier();
    uint32_t id = rxq.used.ring[rxq.last_used++ % VQ_SIZE].id;
    memcpy(out, rxbuf[id], sizeof *out);
    refill((int)id);
    return 1;
}

#define SECONDS(s) ((uint64_t)(s) * 3000000000ull) /* at most s seconds on a <= 3 GHz TSC */

/* Waits for a RESPONSE or RST to guest port `port`: 1 if connected. */
static int answer(uint32_t port) {
    struct hdr h;
    while (receive(&h, SECONDS(10)))
        if (h.dst_port == port && (h.op == RESPONSE || h.op == RST)) return h.op == RESPONSE;
    puts_("VSOCK-TIMEOUT\n");
    return 0;
}

static int wait_op(uint32_t port, uint16_t op) {
    struct hdr h;
    while (receive(&h, SECONDS(10)))
        if (h.dst_port == port && h.op == op) return 1;
    return 0;
}

static void idle(void) { struct hdr h; for (;;) receive(&h, SECONDS(1)); }

static void flood(void) {
    enum { N = 300 };
    static uint8_t open[N];
    int opened = 0;
    for (int i = 0; i < N; i++) {
        send(10000 + i, 1234, REQUEST, 0, 0);
        open[i] = (uint8_t)answer(10000 + i);
        opened += open[i];
    }
    puts_("FLOOD-OPEN "); putdec(opened); puts_(" REFUSED "); putdec(N - opened); putc_('\n');
    for (int i = 0; i < N; i++) if (open[i]) send(10000 + i, 1234, RST, 0, 0);
    send(20000, 1234, REQUEST, 0, 0);
    puts_(answer(20000) ? "FLOOD-AGAIN CONNECTED\n" : "FLOOD-AGAIN REFUSED\n");
    puts_("FLOOD-DONE\n");
    idle();
}

static void full(void) {
    for (int i = 0; i < 3; i++) send(3000 + i, 1235, REQUEST, 0, 0);
    send(3100, 1234, REQUEST, 0, 0);
    int refused = 0, other = 0;
    struct hdr h;
    while ((refused < 3 || !other) && receive(&h, SECONDS(10))) {
        if (h.dst_port == 3100 && h.op == RESPONSE) { other = 1; puts_("FULL-OTHER-CONNECTED\n"); }
        if (h.dst_port >= 3000 && h.dst_port < 3003) {
            if (h.op == RST) refused++;
            if (h.op == RESPONSE) puts_("FULL-CONNECTED\n");
        }
    }
    puts_("FULL-REFUSED "); putdec(refused); putc_('\n');
    for (int i = 0; i < 3; i++) send(3200 + i, 1235, REQUEST, 0, 0);
    puts_("FULL-RETRYING\n");
    idle();
}

static void hostclose(void) {
    enum { N = 20 };
    for (int i = 0; i < N; i++) {
        send(4000 + i, 1234, REQUEST, 0, 0);
        if (!answer(4000 + i)) { puts_("HOSTCLOSE-REFUSED\n"); return; }
        if (!wait_op(4000 + i, SHUTDOWN)) { puts_("HOSTCLOSE-NO-SHUTDOWN\n"); return; }
    }
    puts_("HOSTCLOSE-DONE\n");
    int resets = 0;
    struct hdr h;
    while (resets < N && receive(&h, SECONDS(10)))
        if (h.op == RST && h.dst_port >= 4000 && h.dst_port < 4000 + N) resets++;
    puts_("HOSTCLOSE-RST "); putdec(resets); putc_('\n');
    idle();
}

static void double_close(void) {
    send(5000, 1234, REQUEST, 0, 0);
    if (!answer(5000)) { puts_("DOUBLE-REFUSED\n"); return; }
    if (!wait_op(5000, SHUTDOWN)) { puts_("DOUBLE-NO-SHUTDOWN\n"); return; }
    queue(0, 5000, 1234, RW, 0, "x");
    queue(1, 5000, 1234, SHUTDOWN, 3, 0);
    kick(2);
    puts_(wait_op(5000, RST) ? "DOUBLE-RST\n" : "DOUBLE-NO-RST\n");
    puts_("DOUBLE-DONE\n");
}

int main(void) {
    struct vdev d;
    if (vdev_find(&d, 19, 0) || vdev_init(&d, 0) || vq_setup(&d, &rxq, 0) || vq_setup(&d, &txq, 1) || vq_setup(&d, &evq, 2)) {
        puts_("VSOCK-NODEV\n"); return 0;
    }
    vdev_driver_ok(&d);
    rxq.avail.flags = txq.avail.flags = 1;
    cid = (uint64_t)mmio_read32(d.base + 0x100) | (uint64_t)mmio_read32(d.base + 0x104) << 32;
    for (int i = 0; i < 8; i++) refill(i);
    puts_("VSOCK-READY\n");
    const char *c = rt_cmdline();
    if (has_word(c, "flood")) flood();
    else if (has_word(c, "full")) full();
    else if (has_word(c, "hostclose")) hostclose();
    else if (has_word(c, "double")) double_close();
    else if (has_word(c, "symlink")) {
        send(6000, 1236, REQUEST, 0, 0);
        puts_(answer(6000) ? "SYMLINK-CONNECTED\n" : "SYMLINK-REFUSED\n");
    } else puts_("VSOCK-NOMODE\n");
    return 0;
}
