// virtio-blk request framing: header parsing, range checks, discard segments.
import SkiffCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard bytes.count >= 24 else { return 0 }
    let readable = UInt64(bytes[16]) << 8 | UInt64(bytes[17]) << 24 | UInt64(bytes[18])
    let writable = UInt64(bytes[19]) << 16 | UInt64(bytes[20])
    if let r = try? BlockRequest.parse(header: Array(bytes[0..<16]), readableLength: readable, writableLength: writable) {
        let capacity = UInt64(bytes[21]) << 40 | UInt64(bytes[22]) << 8 | UInt64(bytes[23])
        if r.fits(capacitySectors: capacity) {
            precondition(r.sector <= capacity && r.dataLength / BlockRequest.sectorSize <= capacity - r.sector)
        }
    }
    for s in BlockRequest.segments(Array(bytes[24...])) { _ = s.sector &+ UInt64(s.count) }
    return 0
}
