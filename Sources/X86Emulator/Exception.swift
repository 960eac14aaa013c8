/// A fault or trap the emulated instruction raises, to be delivered to the
/// guest as real hardware would deliver it.
public struct X86Exception: Error, Equatable, Sendable, CustomStringConvertible {
    public let vector: UInt8
    public let errorCode: UInt32?
    /// For #PF: the linear address that faulted (goes to CR2).
    public let address: UInt64?

    public init(vector: UInt8, errorCode: UInt32? = nil, address: UInt64? = nil) {
        self.vector = vector
        self.errorCode = errorCode
        self.address = address
    }

    public static let divideError = X86Exception(vector: 0)
    public static let breakpoint = X86Exception(vector: 3)
    public static let invalidOpcode = X86Exception(vector: 6)
    public static let deviceNotAvailable = X86Exception(vector: 7)
    public static let x87FloatingPoint = X86Exception(vector: 16)
    public static func generalProtection(_ code: UInt32 = 0) -> X86Exception { X86Exception(vector: 13, errorCode: code) }
    public static func stackFault(_ code: UInt32 = 0) -> X86Exception { X86Exception(vector: 12, errorCode: code) }
    public static func segmentNotPresent(_ code: UInt32) -> X86Exception { X86Exception(vector: 11, errorCode: code) }
    public static func pageFault(_ address: UInt64, code: UInt32) -> X86Exception {
        X86Exception(vector: 14, errorCode: code, address: address)
    }

    /// Faults leave RIP at the instruction; #BP (from int3) is a trap.
    public var isTrap: Bool { vector == 3 }

    public var description: String {
        let names: [UInt8: String] = [0: "#DE", 3: "#BP", 6: "#UD", 7: "#NM", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF"]
        var s = names[vector] ?? "vector \(vector)"
        if let e = errorCode { s += "(0x\(String(e, radix: 16)))" }
        if let a = address { s += " at 0x\(String(a, radix: 16))" }
        return s
    }
}

/// Page-fault error code bits.
enum PFError {
    static let present: UInt32 = 1, write: UInt32 = 2, user: UInt32 = 4, reserved: UInt32 = 8, fetch: UInt32 = 16
}
