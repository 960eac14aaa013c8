// vsock packet headers: parse, and what is parsed writes back the same bytes.
import SkiffCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let h = VsockHeader.parse(bytes) {
        precondition(h.bytes == Array(bytes.prefix(VsockHeader.size)))
        _ = h.operation
    }
    return 0
}
