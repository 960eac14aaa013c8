// MAC addresses as users write them on the command line.
import SkiffCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    if let mac = Net.parseMAC(text) { precondition(mac.count == 6 && mac[0] & 1 == 0) }
    return 0
}
