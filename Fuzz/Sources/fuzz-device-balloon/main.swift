// virtio-balloon driven whole through its MMIO transport (DeviceHarness),
// with statistics, deflate-on-OOM and free page reporting offered; the
// target's event is the host asking for fresh statistics.
import SkiffCore

let balloon: Balloon = {
    var options = Balloon.Options()
    options.targetMiB = 1
    return try! Balloon(options)
}()
let harness = DeviceHarness(device: balloon)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    harness.run(data, size) { _ in balloon.requestStatistics() }
    return 0
}
