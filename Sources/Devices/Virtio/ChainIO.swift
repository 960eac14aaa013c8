import Machine

/// Reads and writes across a chain's buffers as if they were one span.
/// Every buffer was bounds-checked by the walker; lengths here are capped
/// by what the buffers hold.
public struct ChainIO {
    public let memory: GuestMemory
    public let buffers: ArraySlice<VirtBuffer>

    public init(memory: GuestMemory, buffers: ArraySlice<VirtBuffer>) {
        self.memory = memory
        self.buffers = buffers
    }

    public var length: UInt64 { buffers.reduce(0) { $0 + UInt64($1.length) } }

    /// Copies up to `count` bytes starting `offset` bytes into the span.
    public func read(offset: UInt64, count: Int) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        visit(offset: offset, count: UInt64(count)) { p, n in
            out.append(contentsOf: UnsafeRawBufferPointer(start: p, count: n))
        }
        return out
    }

    /// Writes `bytes` starting `offset` bytes into the span; returns how many fit.
    @discardableResult
    public func write(_ bytes: [UInt8], offset: UInt64) -> Int {
        var done = 0
        bytes.withUnsafeBytes { src in
            visit(offset: offset, count: UInt64(bytes.count)) { p, n in
                p.copyMemory(from: src.baseAddress! + done, byteCount: n)
                done += n
            }
        }
        return done
    }

    /// Calls `body` with host pointers for the bytes [offset, offset+count).
    public func visit(offset: UInt64, count: UInt64, _ body: (UnsafeMutableRawPointer, Int) throws -> Void) rethrows {
        var skip = offset, left = count
        for b in buffers where left > 0 {
            let len = UInt64(b.length)
            if skip >= len { skip -= len; continue }
            let n = min(len - skip, left)
            let p = try! memory.pointer(at: b.address + skip, length: n) // checked by the walker
            if b.writable { memory.markDirty(b.address + skip, length: n) } // for diff snapshots
            try body(p, Int(n))
            left -= n
            skip = 0
        }
    }
}
