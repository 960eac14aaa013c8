import Glibc
import HostTools

/// The manager's commands (`skiff ps`, `create`, ...) are skiffd's CLI,
/// which links what this small per-VM binary must not (Foundation, the
/// HTTP client, the generated API): `skiff` replaces itself with
/// `skiffd --client ARGS`, found at $SKIFFD_BIN, beside this binary, or in /usr/bin.
enum Manager {
    static let version = "0.10.0"

    static let usage = """

    Manager commands (through skiffd; `skiff COMMAND --help` for each):
           skiff ps | create NAME | start | stop | kill | pause | resume | rm NAME...
           skiff logs [-f] NAME | inspect NAME | attach NAME | snapshot VM [NAME] | clone VM -c N
           skiff usage [--format table|csv|json] | events [-f]
    Appliances and images:
           skiff appliance build SPEC | image ls | inspect IMAGE | rm IMAGE... | gc
    Backups (to a backup server; `skiff backup --help`):
           skiff backup create|restore|ls|verify|prune|rm|gc|key   skiff backup-server
    """

    static func handOver(_ args: ArraySlice<String>) -> Never {
        var candidates: [String] = []
        if let named = getenv("SKIFFD_BIN") { candidates.append(String(cString: named)) }
        if let bin = Executable.directory { candidates.append(bin + "/skiffd") }
        candidates += ["/usr/bin/skiffd", "/usr/local/bin/skiffd"]
        let argv = (["skiffd", "--client"] + Array(args)).map { strdup($0) } + [nil]
        for path in candidates where access(path, X_OK) == 0 {
            execv(path, argv)
        }
        fail("\(args.first!): this is a skiffd command, and no skiffd was found beside skiff or in /usr/bin (install Skiff's package, or build it with `swift build --product skiffd`)", status: 2)
    }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFDIR
    }
}
