// virtio-blk driven whole through its MMIO transport (DeviceHarness), on a
// 1 MiB image file in a scratch directory, emptied before each input.
import Glibc
import SkiffCore

let directory = DeviceHarness.scratchDirectory("fuzz-blk")
let path = directory + "/disk.img"
let image = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
let harness: DeviceHarness = {
    precondition(image >= 0 && ftruncate(image, 1 << 20) == 0, "fuzz-device-blk: cannot make \(path)")
    return DeviceHarness(device: try! Block(Block.Options(path: path), fd: try! Block.open(Block.Options(path: path))))
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    // The same disk for every input: zeroes, its size unchanged.
    _ = ftruncate(image, 0)
    _ = ftruncate(image, 1 << 20)
    harness.run(data, size)
    return 0
}
