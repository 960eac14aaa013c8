// virtio-vsock driven whole through its MMIO transport (DeviceHarness),
// with its host side in a scratch directory: the device's socket, and a
// host listener on port 1024 for the guest's connections. The target's
// event (by arg % 4): a host program connects and asks for a guest port;
// the host accepts the guest's connections; the host writes to every
// connection it holds; the host closes them all.
import Glibc
import SkiffCore

let directory = DeviceHarness.scratchDirectory("fuzz-vsock")
let socketPath = directory + "/v.sock"
let harness = DeviceHarness(device: try! Vsock(Vsock.Options(cid: 3, socketPath: socketPath), listener: try! Vsock.listen(socketPath)))
let hostListener = listenUnix(socketPath + "_1024")
nonisolated(unsafe) var hostFDs: [Int32] = []

func listenUnix(_ path: String) -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var address = sockaddr_un()
    precondition(fd >= 0 && unixAddress(path, &address))
    let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
    // A deep backlog, drained before every reset: the device's connect
    // to a host port must never find it full here.
    precondition(bound == 0 && listen(fd, 4096) == 0, "fuzz-device-vsock: cannot listen on \(path)")
    return fd
}

func connectUnix(_ path: String) -> Int32? {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var address = sockaddr_un()
    guard fd >= 0, unixAddress(path, &address) else { return nil }
    let r = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
    guard r == 0 else { close(fd); return nil }
    return fd
}

func acceptAll() {
    while true {
        let fd = accept(hostListener, nil, nil)
        guard fd >= 0 else { return }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        hostFDs.append(fd)
    }
}

func closeAll() {
    acceptAll()
    for fd in hostFDs { close(fd) }
    hostFDs = []
}

func event(_ arg: UInt8) {
    switch arg % 4 {
    case 0:
        guard hostFDs.count < 64, let fd = connectUnix(socketPath) else { return }
        let line = Array("CONNECT \(1024 + UInt32(arg >> 2) % 4)\n".utf8)
        _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        hostFDs.append(fd)
    case 1: acceptAll()
    case 2:
        let bytes = [UInt8](repeating: arg, count: 64)
        for fd in hostFDs { _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }
    default: closeAll()
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    _ = hostListener // listening before the guest's first connection
    harness.run(data, size, event: event, finish: closeAll)
    return 0
}
