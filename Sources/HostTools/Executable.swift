import Glibc

/// This process's own binary, from /proc/self/exe: where an installed
/// Skiff finds what it was installed with (skiffd beside skiff, the
/// kernel's build inputs under ../share/skiff).
public enum Executable {
    public static var path: String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX))
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The folder holding this binary.
    public static var directory: String? {
        guard let exe = path, let slash = exe.utf8.lastIndex(of: UInt8(ascii: "/")) else { return nil }
        return String(exe[..<slash])
    }
}
