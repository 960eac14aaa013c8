// virtio-rng driven whole through its MMIO transport (DeviceHarness).
import SkiffCore

let harness = DeviceHarness(device: Rng())

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    harness.run(data, size)
    return 0
}
