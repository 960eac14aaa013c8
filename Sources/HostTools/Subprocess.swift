import Glibc

/// Runs a host program with posix_spawn: the per-VM binary links no
/// Foundation, so no `Process`. Its stderr is the caller's (progress shows).
/// Also used by the VMM to set up host networking (`ip`, `nft`).
public enum Subprocess {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        public init(description: String) { self.description = description }
    }

    /// Runs `argv` (searched in PATH); returns its stdout when `capture`.
    /// `quiet` sends its stderr to /dev/null (for probing commands).
    @discardableResult
    public static func run(_ argv: [String], capture: Bool = false, quiet: Bool = false) throws -> String {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if quiet { posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0) }
        var pipeFDs: [Int32] = [-1, -1]
        if capture {
            guard pipe(&pipeFDs) == 0 else { throw Failure(description: "pipe: \(String(cString: strerror(errno)))") }
            posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
            posix_spawn_file_actions_addclose(&actions, pipeFDs[0])
        }
        var cArgs = argv.map { strdup($0) } + [nil]
        defer { for a in cArgs { free(a) } }
        var pid: pid_t = 0
        let r = posix_spawnp(&pid, argv[0], &actions, nil, &cArgs, environ)
        if capture { close(pipeFDs[1]) }
        guard r == 0 else {
            if capture { close(pipeFDs[0]) }
            throw Failure(description: "\(argv[0]): \(String(cString: strerror(r)))")
        }
        var output: [UInt8] = []
        if capture {
            var buf = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = buf.withUnsafeMutableBytes { read(pipeFDs[0], $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                output += buf[0..<n]
            }
            close(pipeFDs[0])
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exited = status & 0x7f == 0
        let code = (status >> 8) & 0xff
        guard exited && code == 0 else {
            throw Failure(description: "\(argv.joined(separator: " ")) failed (\(exited ? "exit \(code)" : "signal \(status & 0x7f)"))")
        }
        return String(decoding: output, as: UTF8.self)
    }
}
