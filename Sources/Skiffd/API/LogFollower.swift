import Foundation
import Glibc
import OpenAPIRuntime

/// `logs --follow`: the console log from its end onwards, polled, until the
/// VM's process is gone (then what is left, then the end of the body).
/// A rotated log (`Console.rotate`) is read again from its start.
func followLog(manager: Manager, name: String, path: String, first: [UInt8], period: UInt64 = 200_000_000) -> AsyncStream<ArraySlice<UInt8>> {
    AsyncStream { continuation in
        let task = Task {
            if !first.isEmpty { continuation.yield(ArraySlice(first)) }
            var offset = Console.size(path)
            var buffer = [UInt8](repeating: 0, count: 64 << 10)
            while !Task.isCancelled {
                let active = await manager.isActive(name)
                let size = Console.size(path)
                if size < offset { offset = 0 }
                if size > offset {
                    let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
                    if fd >= 0 {
                        while offset < size {
                            let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, min($0.count, Int(size - offset)), off_t(offset)) }
                            guard n > 0 else { break }
                            continuation.yield(ArraySlice(buffer[..<n]))
                            offset += Int64(n)
                        }
                        close(fd)
                    }
                }
                if !active { break }
                try? await Task.sleep(nanoseconds: period)
            }
            continuation.finish()
        }
        continuation.onTermination = { _ in task.cancel() }
    }
}

extension Manager {
    func isActive(_ name: String) -> Bool {
        guard let vm = try? store.vm(named: name) else { return false }
        return VMState(rawValue: vm.observed)?.isActive == true
    }
}
