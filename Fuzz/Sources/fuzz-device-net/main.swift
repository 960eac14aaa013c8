// virtio-net driven whole through its MMIO transport (DeviceHarness), over
// a real TAP in a network namespace of its own (made at start; needs root,
// as skiff's --net does): what the guest sends goes nowhere else, and the
// target's event sends a frame into the TAP (the guest receives it) from a
// packet socket on it. Without root or /dev/net/tun the target says so and
// runs every input as a no-op.
import Glibc
import SkiffCore

let tapName = "skfuzz0"

func setUp() -> (DeviceHarness, Int32)? {
    func skip(_ why: String) -> (DeviceHarness, Int32)? {
        var line = Array("fuzz-device-net: skipped: \(why): \(String(cString: strerror(errno)))\n".utf8)
        _ = line.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
        return nil
    }
    guard cfuzz_unshare_network() == 0 else { return skip("no network namespace of its own") }
    let netOptions = Net.Options(tap: tapName, mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56])
    guard let tap = try? Net.openTap(netOptions) else { return skip("no TAP") }
    let net = Net(netOptions, tap: tap.fd, interfaceName: tap.name)
    // Up, so frames sent to it reach the device's TAP fd.
    guard cfuzz_interface_up(tapName) == 0 else { return skip("cannot bring \(tapName) up") }
    let packet = cfuzz_packet_socket()
    guard packet >= 0 else { return skip("no packet socket") }
    return (DeviceHarness(device: net), packet)
}

let setup = setUp()
let ifindex = Int32(if_nametoindex(tapName))

/// A frame of 14 + arg bytes to the guest's MAC, sent out through the TAP.
func inject(_ arg: UInt8) {
    guard let (_, packet) = setup else { return }
    var frame: [UInt8] = [0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x02, 0, 0, 0, 0, 1, 0x88, 0xb5]
    frame += [UInt8](repeating: arg, count: Int(arg))
    _ = frame.withUnsafeBytes { cfuzz_send_frame(packet, ifindex, $0.baseAddress, $0.count) }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    setup?.0.run(data, size, event: inject)
    return 0
}
