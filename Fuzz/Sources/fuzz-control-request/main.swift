// Control socket lines as any local peer may send them (and reply lines as
// a VM may answer): parsing never traps, and what parses encodes to a line
// that parses back to the same thing.
import SkiffControl

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let request = try? ControlRequest.parse(bytes) {
        let line = request.line
        precondition(line.last == 0x0a && line.dropLast().allSatisfy { $0 != 0x0a })
        precondition((try? ControlRequest.parse(Array(line.dropLast()))) == request, "request does not round-trip")
    }
    if let reply = try? ControlReply.parse(bytes) {
        let line = reply.line
        precondition(line.count <= ControlReply.maxLine + 1 && line.last == 0x0a && line.dropLast().allSatisfy { $0 != 0x0a })
        guard let again = try? ControlReply.parse(Array(line.dropLast())) else { preconditionFailure("reply line does not parse") }
        precondition(again.line == line, "reply does not round-trip")
    }
    return 0
}
