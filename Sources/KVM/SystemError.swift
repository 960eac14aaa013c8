import Glibc

/// A failed system call, with the operation that failed and errno's text.
public struct SystemError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    public let errno: Int32

    public init(_ operation: String, errno: Int32 = Glibc.errno) {
        self.operation = operation
        self.errno = errno
    }

    public var description: String {
        "\(operation): \(String(cString: strerror(errno)))"
    }
}

/// Runs an ioctl-like call and turns -1 into a `SystemError`.
@inline(__always)
func check(_ operation: @autoclosure () -> String, _ result: Int32) throws -> Int32 {
    if result < 0 { throw SystemError(operation()) }
    return result
}
