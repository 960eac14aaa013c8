// swift-tools-version:6.0
// Skiff: a virtual machine monitor for Linux/KVM, written in Swift.
// Layers (each depends only on those below it):
//   skiff (CLI) -> VMM -> Devices -> Machine -> KVM -> CKVM
//   X86Emulator (instructions KVM's emulator lacks) under Machine.
//   SkiffControl (the control socket's protocol) under VMM and skiff.
//   Appliance (guest images, the default kernel) beside them; HostTools
//   (running host programs) under both.
// The per-VM process (`skiff run`) links none of Foundation and is linked
// statically in release builds (see scripts/build).
import PackageDescription

let package = Package(
    name: "skiff",
    products: [
        .executable(name: "skiff", targets: ["skiff"]),
        .executable(name: "skiffd", targets: ["skiffd"]),
    ],
    dependencies: [
        // skiffd (the host manager) and its CLI only; the per-VM process links none of these.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/hummingbird-project/swift-openapi-hummingbird", from: "2.1.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-websocket", from: "2.8.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-openapi-runtime", from: "1.13.4"),
        .package(url: "https://github.com/swift-server/swift-openapi-async-http-client", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        // Appliance specs (YAML) and the image store's digests.
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
    ],
    targets: [
        .target(name: "CKVM"),
        // seccomp allow-lists per thread role, on Debian's libseccomp (static in release builds).
        .target(name: "CSeccomp", linkerSettings: [.linkedLibrary("seccomp")]),
        .target(name: "KVM", dependencies: ["CKVM"]),
        // Completes the instructions KVM's emulator lacks (pure Swift, no KVM).
        .target(name: "X86Emulator"),
        .target(name: "Machine", dependencies: ["KVM", "CKVM", "CSeccomp", "X86Emulator"]),
        // Changed-block maps: written by the VMM, read by the backup client (Foundation-free).
        .target(name: "BlockTracking"),
        .target(name: "Devices", dependencies: ["Machine", "CKVM", "BlockTracking"]),
        .target(name: "HostTools"),
        // HMAC-SHA256 for snapshot seals, on Debian's Nettle.
        .target(name: "CCrypto", linkerSettings: [.linkedLibrary("nettle")]),
        // The jailer: namespaces, an empty root, no privileges, a cgroup.
        .target(name: "CJail"),
        .target(name: "Jail", dependencies: ["CJail"]),
        .target(name: "SkiffControl"),
        .target(name: "VMM", dependencies: ["Devices", "Machine", "KVM", "CKVM", "HostTools", "CCrypto", "SkiffControl", "BlockTracking"]),
        .target(name: "Appliance", dependencies: ["HostTools"]),
        .executableTarget(name: "skiff", dependencies: ["VMM", "Appliance", "HostTools", "Jail", "SkiffControl"]),
        // The REST API's contract (openapi.yaml) and the code generated from
        // it by scripts/openapi-generate (committed: CI need not build the generator).
        .target(name: "SkiffAPI", dependencies: [.product(name: "OpenAPIRuntime", package: "swift-openapi-runtime")],
                exclude: ["openapi.yaml", "openapi-generator-config.yaml"]),
        // The host manager: state in SQLite, VMs as jailed `skiff run` processes.
        .target(name: "CSkiffd"),
        .target(name: "Skiffd", dependencies: [
            "SkiffAPI", "SkiffControl", "CSkiffd",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "OpenAPIHummingbird", package: "swift-openapi-hummingbird"),
            // TLS on --tcp (swift-nio-ssl, which AsyncHTTPClient links already).
            .product(name: "HummingbirdTLS", package: "hummingbird"),
            .product(name: "HummingbirdCore", package: "hummingbird"),
            // `attach`: the console over a WebSocket.
            .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
            .product(name: "GRDB", package: "GRDB.swift"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        // Appliances: specs, the builder (mmdebstrap, erofs), the content-addressed image store.
        .target(name: "Images", dependencies: [
            .product(name: "Yams", package: "Yams"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // Debian's libzstd (backup chunks are compressed with it), and syncfs.
        .target(name: "CBackup", linkerSettings: [.linkedLibrary("zstd")]),
        // Backup: the chunk format (SHA-256, zstd, AES-256-GCM), the backup
        // server (`skiff backup-server`) and its client (`skiff backup`).
        .target(name: "Backup", dependencies: [
            "CBackup", "BlockTracking", "SkiffControl",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HummingbirdTLS", package: "hummingbird"),
            .product(name: "HummingbirdCore", package: "hummingbird"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // skiffd, and the manager's CLI (`skiff ps`, ...) that `skiff` hands over to.
        .executableTarget(name: "skiffd", dependencies: [
            "Skiffd", "SkiffAPI", "Images", "Backup",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "OpenAPIAsyncHTTPClient", package: "swift-openapi-async-http-client"),
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            // `skiff attach`: a WebSocket client on skiffd's Unix socket (or TLS).
            "SkiffControl",
            .product(name: "NIOWebSocket", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
        ]),
        .testTarget(name: "MachineTests", dependencies: ["Machine", "Devices"]),
        .testTarget(name: "X86EmulatorTests", dependencies: ["X86Emulator"]),
        .testTarget(name: "ApplianceTests", dependencies: ["Appliance"]),
        .testTarget(name: "SkiffTests", dependencies: ["Appliance", "Machine", "SkiffControl"], exclude: ["schemathesis_hooks.py", "fresh_root_install.sh"]),
        .testTarget(name: "SkiffdTests", dependencies: ["Skiffd"]),
        .testTarget(name: "BackupTests", dependencies: ["Backup", "BlockTracking"]),
        .testTarget(name: "ImagesTests", dependencies: ["Images"]),
    ]
)

// libFuzzer targets (Fuzz/), built only by scripts/fuzz, which sets
// SKIFF_FUZZ and -sanitize=fuzzer: libFuzzer brings its own main, so these
// cannot link in an ordinary build.
if Context.environment["SKIFF_FUZZ"] != nil {
    package.targets.append(.target(name: "CFuzz", path: "Fuzz/CFuzz"))
    package.targets.append(.target(name: "SkiffCore", dependencies: ["Machine", "Devices", "CFuzz"], path: "Fuzz/SkiffCore"))
    for name in ["fuzz-virtqueue", "fuzz-block-request", "fuzz-vsock-packet", "fuzz-kernel-image", "fuzz-net-mac", "fuzz-snapshot-state",
                 "fuzz-device-rng", "fuzz-device-blk", "fuzz-device-balloon", "fuzz-device-vsock", "fuzz-device-net"] {
        package.targets.append(.executableTarget(name: name, dependencies: ["SkiffCore"], path: "Fuzz/Sources/\(name)",
                                                 swiftSettings: [.unsafeFlags(["-parse-as-library"])]))
    }
    package.targets.append(.executableTarget(name: "fuzz-x86-emulator", dependencies: ["X86Emulator"], path: "Fuzz/Sources/fuzz-x86-emulator",
                                             swiftSettings: [.unsafeFlags(["-parse-as-library"])]))
    package.targets.append(.executableTarget(name: "fuzz-control-request", dependencies: ["SkiffControl"], path: "Fuzz/Sources/fuzz-control-request",
                                             swiftSettings: [.unsafeFlags(["-parse-as-library"])]))
}
