// Kernel images (ELF, bzImage or anything else) parsed and loaded into a
// small guest: a hostile file gets an error, never a trap.
import SkiffCore

let memory = try! GuestMemory(size: 4 << 20)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let image = try? KernelImage.parse(bytes, path: "fuzz") {
        _ = try? BootSetup.prepare(memory: memory, kernel: image, initrd: ("i", [1, 2, 3]), commandLine: "console=ttyS0", cpus: 2)
    }
    return 0
}
