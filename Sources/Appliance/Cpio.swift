/// Writes a cpio archive in the "newc" format (what the Linux kernel
/// unpacks as an initramfs): 110-byte ASCII headers, names and data each
/// padded to 4 bytes, ended by TRAILER!!!.
public struct CpioWriter {
    public private(set) var bytes: [UInt8] = []
    private var inode: UInt32 = 1

    public init() {}

    public static let directoryMode: UInt32 = 0o040000
    public static let fileMode: UInt32 = 0o100000
    public static let symlinkMode: UInt32 = 0o120000
    public static let characterDeviceMode: UInt32 = 0o020000

    public mutating func directory(_ path: String, permissions: UInt32 = 0o755) {
        entry(path, mode: Self.directoryMode | permissions, data: [])
    }

    public mutating func file(_ path: String, _ data: [UInt8], permissions: UInt32 = 0o644) {
        entry(path, mode: Self.fileMode | permissions, data: data)
    }

    public mutating func symlink(_ path: String, to target: String) {
        entry(path, mode: Self.symlinkMode | 0o777, data: Array(target.utf8))
    }

    public mutating func characterDevice(_ path: String, major: UInt32, minor: UInt32, permissions: UInt32 = 0o600) {
        entry(path, mode: Self.characterDeviceMode | permissions, data: [], rdev: (major, minor))
    }

    /// Closes the archive; returns its bytes.
    public mutating func finish() -> [UInt8] {
        entry("TRAILER!!!", mode: 0, data: [], countInode: false)
        return bytes
    }

    mutating func entry(_ name: String, mode: UInt32, data: [UInt8], rdev: (UInt32, UInt32) = (0, 0), countInode: Bool = true) {
        let nameBytes = Array(name.utf8) + [0]
        let fields: [UInt32] = [
            countInode ? inode : 0, mode, 0, 0, // ino, mode, uid, gid
            mode & 0o170000 == Self.directoryMode ? 2 : 1, // nlink
            0, UInt32(data.count), 0, 0, rdev.0, rdev.1, // mtime, filesize, devmajor, devminor, rdevmajor, rdevminor
            UInt32(nameBytes.count), 0, // namesize, check
        ]
        if countInode { inode += 1 }
        bytes += Array("070701".utf8)
        for f in fields { bytes += Array(hex8(f).utf8) }
        bytes += nameBytes
        pad()
        bytes += data
        pad()
    }

    private mutating func pad() {
        while bytes.count % 4 != 0 { bytes.append(0) }
    }

    func hex8(_ v: UInt32) -> String {
        let s = String(v, radix: 16, uppercase: true)
        return String(repeating: "0", count: 8 - s.count) + s
    }
}
