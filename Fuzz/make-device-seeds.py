#!/usr/bin/env python3
# Writes the seeds of the fuzz-device-* targets (Fuzz/corpus/<target>/): a
# driver that starts the device and submits valid requests of each kind,
# in the input format of Fuzz/SkiffCore/DeviceHarness.swift.
#   Fuzz/make-device-seeds.py
import os, struct

HERE = os.path.dirname(os.path.abspath(__file__))
NEXT, WRITE, INDIRECT = 1, 2, 4
QSIZE_LOG = 4  # 16-entry queues


def base(q): return 0x100 + 0x300 * q


class Seed:
    def __init__(self):
        self.ram = bytearray(0x10000)
        self.ops = bytearray()
        self.avail = {}

    def put(self, addr, data): self.ram[addr:addr + len(data)] = data

    def desc(self, table, i, addr, length, flags=0, nxt=0):
        self.put(table + 16 * i, struct.pack('<QIHH', addr, length, flags, nxt))

    def chain(self, q, head, bufs):
        """bufs: (addr, len, writable); written at descriptors head.. of queue q."""
        for k, (addr, length, w) in enumerate(bufs):
            last = k == len(bufs) - 1
            self.desc(base(q), head + k, addr, length, (WRITE if w else 0) | (0 if last else NEXT), 0 if last else head + k + 1)
        return head

    def make_available(self, q, heads, in_ram=True):
        """Adds heads to q's available ring: in the image, or as a RAM poke op."""
        n = self.avail.get(q, 0)
        for h in heads:
            at = base(q) + 0x100 + 4 + 2 * (n % 16)
            if in_ram: self.put(at, struct.pack('<H', h))
            else: self.poke(at, struct.pack('<H', h))
            n += 1
        self.avail[q] = n
        if in_ram: self.put(base(q) + 0x102, struct.pack('<H', n))
        else: self.poke(base(q) + 0x102, struct.pack('<H', n))

    # ops
    def start(self, features): self.ops += bytes([4]) + struct.pack('<IB', features & 0xffffffff, features >> 32)
    def queue(self, q): self.ops += bytes([5, q, QSIZE_LOG])
    def driver_ok(self): self.ops += bytes([6])
    def notify(self, q): self.ops += bytes([2, q])
    def event(self, arg): self.ops += bytes([7, arg])
    def write(self, off, v): self.ops += bytes([0, off // 4]) + struct.pack('<I', v)
    def read(self, off): self.ops += bytes([1, off // 4])
    def poke(self, addr, data): self.ops += bytes([3]) + struct.pack('<HB', addr, len(data)) + data

    def save(self, target, name):
        image = bytes(self.ram).rstrip(b'\0')
        d = os.path.join(HERE, 'corpus', target)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, name), 'wb') as f:
            f.write(struct.pack('<H', len(image)) + image + self.ops)


TRANSPORT = 1 << 28 | 1 << 29  # indirect descriptors, event index

# virtio-rng: one direct and one indirect request.
s = Seed()
s.chain(0, 0, [(0x2000, 64, True)])
s.desc(0x3000, 0, 0x2100, 32, WRITE | NEXT, 1)
s.desc(0x3000, 1, 0x2200, 32, WRITE)
s.desc(base(0), 1, 0x3000, 32, INDIRECT)
s.make_available(0, [0])
s.start(TRANSPORT); s.queue(0); s.driver_ok(); s.notify(0)
s.make_available(0, [1], in_ram=False); s.notify(0); s.read(0x70)
s.save('fuzz-device-rng', 'two-requests')

# virtio-blk: write, read, flush, get-ID, discard, and write-zeroes through
# an indirect table (16 descriptors do not hold them all directly).
s = Seed()
def blk(head, at, kind, sector, data=None, data_len=0, table=None):
    s.put(at, struct.pack('<IIQ', kind, 0, sector))
    bufs = [(at, 16, False)]
    if data is not None: s.put(at + 0x20, data); bufs.append((at + 0x20, len(data), False))
    if data_len: bufs.append((at + 0x400, data_len, True))
    bufs.append((at + 0x3ff, 1, True))
    if table is None: return s.chain(0, head, bufs)
    for k, (addr, length, w) in enumerate(bufs):
        last = k == len(bufs) - 1
        s.desc(table, k, addr, length, (WRITE if w else 0) | (0 if last else NEXT), 0 if last else k + 1)
    s.desc(base(0), head, table, 16 * len(bufs), INDIRECT)
    return head
heads = [blk(0, 0x2000, 1, 0, data=bytes(range(256)) * 2),
         blk(3, 0x2800, 0, 0, data_len=512),
         blk(6, 0x3000, 4, 0),
         blk(8, 0x3800, 8, 0, data_len=20),
         blk(11, 0x4000, 11, 0, data=struct.pack('<QII', 8, 8, 0)),
         blk(14, 0x4800, 13, 0, data=struct.pack('<QII', 16, 8, 0), table=0x5000)]
s.make_available(0, heads)
s.start(TRANSPORT | 1 << 9 | 1 << 13 | 1 << 14); s.queue(0); s.driver_ok(); s.read(0x100); s.read(0x130); s.notify(0)
s.save('fuzz-device-blk', 'every-request')

# virtio-balloon: inflate, deflate, statistics (asked for again), reporting.
s = Seed()
s.put(0x2000, struct.pack('<II', 0x20, 0x21))
s.chain(0, 0, [(0x2000, 8, False)])
s.chain(1, 0, [(0x2000, 4, False)])
s.put(0x2100, struct.pack('<HQ', 4, 1 << 20) + struct.pack('<HQ', 5, 2 << 20))
s.chain(2, 0, [(0x2100, 20, False)])
s.chain(3, 0, [(0x30000, 0x2000, True)])
for q in range(4): s.make_available(q, [0])
s.start(TRANSPORT | 1 << 1 | 1 << 2 | 1 << 5)
for q in range(4): s.queue(q)
s.driver_ok(); s.read(0x100); s.write(0x104, 2)
for q in range(4): s.notify(q)
s.event(0)
s.make_available(2, [0], in_ram=False); s.notify(2)
s.save('fuzz-device-balloon', 'every-queue')

# virtio-vsock: rx buffers, an event buffer; the guest connects to host
# port 1024 and sends, the host accepts and answers; a host program connects
# to guest port 1024.
s = Seed()
def vsock_header(op, src_port, dst_port, length=0, flags=0):
    return struct.pack('<QQIIIHHIII', 3, 2, src_port, dst_port, length, 1, op, flags, 1 << 16, 0)
for i in range(4): s.chain(0, i, [(0x20000 + 0x1000 * i, 0x1000, True)])
s.make_available(0, range(4))
s.chain(2, 0, [(0x28000, 8, True)])
s.make_available(2, [0])
s.put(0x2000, vsock_header(1, 5000, 1024))
s.chain(1, 0, [(0x2000, 44, False)])
s.put(0x2100, vsock_header(5, 5000, 1024, 5) + b'hello')
s.chain(1, 1, [(0x2100, 44, False), (0x2100 + 44, 5, False)])
s.put(0x2200, vsock_header(4, 5000, 1024, flags=3))
s.chain(1, 3, [(0x2200, 44, False)])
s.make_available(1, [0])
s.start(TRANSPORT)
for q in range(3): s.queue(q)
s.driver_ok(); s.read(0x100); s.notify(0); s.notify(2); s.notify(1)
s.event(1); s.make_available(1, [1], in_ram=False); s.notify(1); s.event(2); s.notify(0)
s.event(0); s.notify(0)
s.make_available(1, [3], in_ram=False); s.notify(1); s.event(3)
s.save('fuzz-device-vsock', 'connect-both-ways')

# virtio-net: a frame sent, one received into the rx buffers.
s = Seed()
s.put(0x2000, bytes(12) + bytes([0xff] * 6) + bytes([0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x88, 0xb5]) + bytes(46))
s.chain(1, 0, [(0x2000, 12 + 60, False)])
s.make_available(1, [0])
for i in range(2): s.chain(0, i, [(0x20000 + 0x1000 * i, 0x1000, True)])
s.make_available(0, [0, 1])
s.start(TRANSPORT | 1 << 5); s.queue(0); s.queue(1); s.driver_ok(); s.read(0x100)
s.notify(0); s.notify(1); s.event(50); s.notify(0)
s.save('fuzz-device-net', 'send-and-receive')
