/* virtio-vsock from CPL3, polling. Guest CID from the device config.
 * 1. Connects to the host (CID 2) port 1234, sends "hello from guest\n",
 *    prints what the host answers ("GUEST-GOT ..."), shuts the stream down.
 * 2. Accepts the host's connection to port 5000, reads a line, answers
 *    "pong from guest\n" and prints "HOST-SAID ...". Then VSOCK-DONE. */
#include "rt/rt.h"

struct hdr {
    uint64_t src_cid, dst_cid;
    uint32_t src_port, dst_port, len;
    uint16_t type, op;
    uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));
enum { REQUEST = 1, RESPONSE = 2, RST = 3, SHUTDOWN = 4, RW = 5, CREDIT_UPDATE = 6 };

static struct vq rxq, txq, evq;
static uint8_t rxbuf[8][4096] __attribute__((aligned(4096)));
static struct { struct hdr h; char data[256]; } txpkt;
static uint64_t cid;
static uint32_t received;

static void refill(int i) {
    rxq.desc[i] = (struct vq_desc){ (uint64_t)rxbuf[i], 4096, VQ_WRITE, 0 };
    rxq.avail.ring[rxq.next_avail++ % VQ_SIZE] = (uint16_t)i;
    barrier();
    rxq.avail.idx = rxq.next_avail;
    barrier();
    mmio_write32(rxq.dev->base + 0x50, 0);
}

static void send(uint32_t sport, uint32_t dport, uint16_t op, uint32_t flags, const char *data) {
    uint32_t n = 0;
    while (data && data[n]) { txpkt.data[n] = data[n]; n++; }
    txpkt.h = (struct hdr){ cid, 2, sport, dport, n, 1, op, flags, 65536, received };
    txq.desc[0] = (struct vq_desc){ (uint64_t)&txpkt, (uint32_t)(sizeof(struct hdr) + n), 0, 0 };
    vq_kick(&txq, 0);
    vq_wait(&txq, 1ull << 32);
}

/* Waits for the next packet; copies its header, returns its payload. */
static const char *receive(struct hdr *out) {
    uint16_t used;
    for (uint64_t spins = 0; (used = *(volatile uint16_t *)&rxq.used.idx) == rxq.last_used; spins++)
        if (spins > (1ull << 34)) { puts_("VSOCK-TIMEOUT\n"); reset(); }
    barrier();
    uint32_t id = rxq.used.ring[rxq.last_used++ % VQ_SIZE].id;
    memcpy(out, rxbuf[id], sizeof *out);
    static char copy[4096];
    uint32_t n = out->len < 4000 ? out->len : 4000;
    memcpy(copy, rxbuf[id] + sizeof(struct hdr), n);
    copy[n] = 0;
    received += out->op == RW ? out->len : 0;
    refill((int)id);
    return copy;
}

static void show(const char *tag, const char *s) {
    puts_(tag);
    for (; *s && *s != '\n'; s++) putc_(*s);
    putc_('\n');
}

int main(void) {
    struct vdev d;
    if (vdev_find(&d, 19, 0) || vdev_init(&d, 0) || vq_setup(&d, &rxq, 0) || vq_setup(&d, &txq, 1) || vq_setup(&d, &evq, 2)) {
        puts_("VSOCK-NODEV\n"); return 0;
    }
    vdev_driver_ok(&d);
    rxq.avail.flags = txq.avail.flags = 1;
    cid = (uint64_t)mmio_read32(d.base + 0x100) | (uint64_t)mmio_read32(d.base + 0x104) << 32;
    puts_("VSOCK-CID "); putdec(cid); putc_('\n');
    for (int i = 0; i < 8; i++) refill(i);

    struct hdr h;
    send(2000, 1234, REQUEST, 0, 0);
    receive(&h);
    puts_(h.op == RESPONSE ? "GUEST-CONNECTED\n" : "GUEST-REFUSED\n");
    if (h.op == RESPONSE) {
        send(2000, 1234, RW, 0, "hello from guest\n");
        const char *p;
        do { p = receive(&h); } while (h.op != RW && h.op != RST);
        show("GUEST-GOT ", p);
        send(2000, 1234, SHUTDOWN, 3, 0);
        do { receive(&h); } while (h.op != RST);
    }
    puts_("GUEST-LISTENING\n");
    received = 0; /* fwd_cnt is per connection */
    do { receive(&h); } while (!(h.op == REQUEST && h.dst_port == 5000));
    uint32_t host_port = h.src_port;
    send(5000, host_port, RESPONSE, 0, 0);
    const char *p;
    do { p = receive(&h); } while (h.op != RW);
    show("HOST-SAID ", p);
    send(5000, host_port, RW, 0, "pong from guest\n");
    puts_("VSOCK-DONE\n");
    for (;;) { struct hdr x; receive(&x); if (x.op == SHUTDOWN || x.op == RST) break; }
    return 0;
}
