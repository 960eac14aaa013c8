// The virtqueue walker against arbitrary guest memory: the input becomes
// the descriptor table, rings and indirect tables of a queue whose size and
// features come from its first bytes. Every chain that comes out must lie
// in guest RAM, and reading and writing it must not trap.
import SkiffCore

let memory = try! GuestMemory(size: 1 << 20)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size >= 4 else { return 0 }
    let bytes = UnsafeBufferPointer(start: data, count: size)
    try! memory.fill(0, at: 0, length: 1 << 16)
    try! memory.write(UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: bytes[4...])), at: 0x100) // rings live from 0x100
    var config = QueueConfiguration()
    config.size = UInt16(1) << (bytes[0] % 9)            // 1...256
    config.descriptorTable = 0x100
    config.availableRing = 0x100 + UInt64(bytes[1]) * 16
    config.usedRing = 0x8000 + UInt64(bytes[2]) * 4
    config.ready = true
    guard let queue = try? VirtQueue(config, maxSize: 256, memory: memory, eventIndex: bytes[3] & 1 != 0,
                                     indirect: bytes[3] & 2 != 0) else { return 0 }
    for _ in 0..<64 {
        do {
            guard let chain = try queue.pop() else { break }
            for b in chain.buffers { precondition(memory.contains(b.address, length: UInt64(b.length))) }
            let readable = ChainIO(memory: memory, buffers: chain.readable)
            _ = readable.read(offset: 0, count: 64)
            let writable = ChainIO(memory: memory, buffers: chain.writable)
            writable.write([1, 2, 3], offset: writable.length > 3 ? writable.length - 3 : 0)
            queue.push(head: chain.head, written: 3)
            _ = queue.needsInterrupt()
        } catch {
            break
        }
    }
    return 0
}
