import CKVM
import Glibc
import KVM

/// Small readers of host files for the VMM, without Foundation.
public enum HostFiles {
    /// The whole file, refusing anything larger than `limit` before reading it
    /// (and, for what is not a regular file, as soon as it passes it).
    /// `tooLarge` words the refusal; by default it is about guest memory.
    public static func read(_ path: String, what: String, limit: UInt64, regularOnly: Bool = true,
                            tooLarge: ((UInt64) -> String)? = nil) throws(ConfigurationError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ConfigurationError("\(what) \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw ConfigurationError("\(what) \(path): \(String(cString: strerror(errno)))") }
        let regular = st.st_mode & S_IFMT == S_IFREG
        guard regular || !regularOnly else { throw ConfigurationError("\(what) \(path): not a regular file") }
        let size = regular ? UInt64(st.st_size) : 0
        guard size <= limit else {
            throw ConfigurationError(tooLarge.map { "\(what) \(path): \($0(size))" }
                                     ?? "\(what) \(path) (\(size >> 20) MiB) does not fit in guest memory (\(limit >> 20) MiB)")
        }
        // Read to the end rather than trusting st_size: /proc files report 0.
        var bytes = [UInt8](repeating: 0, count: max(Int(size), 4096))
        var done = 0
        while true {
            if done == bytes.count {
                guard UInt64(done) <= limit else {
                    throw ConfigurationError(tooLarge.map { "\(what) \(path): \($0(UInt64(done)))" } ?? "\(what) \(path): grew past \(limit >> 20) MiB while read")
                }
                bytes += [UInt8](repeating: 0, count: bytes.count)
            }
            let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw ConfigurationError("\(what) \(path): read failed after \(done) bytes: \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            done += n
        }
        bytes.removeLast(bytes.count - done)
        return bytes
    }

    /// The host's RAM in MiB (sysinfo(2): no text parsing, which would pull
    /// the stdlib's Unicode tables into the per-VM process).
    public static func hostMemoryMiB() -> UInt64 {
        var info = sysinfo()
        guard sysinfo(&info) == 0 else { return 0 }
        return (UInt64(info.totalram) * UInt64(info.mem_unit)) >> 20
    }
}
