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
    ],
    targets: [
        .target(name: "CKVM"),
        // seccomp allow-lists per thread role, on Debian's libseccomp (static in release builds).
        .target(name: "CSeccomp", linkerSettings: [.linkedLibrary("seccomp")]),
        .target(name: "KVM", dependencies: ["CKVM"]),
        // Completes the instructions KVM's emulator lacks (pure Swift, no KVM).
        .target(name: "X86Emulator"),
        .target(name: "Machine", dependencies: ["KVM", "CKVM", "CSeccomp", "X86Emulator"]),
        .target(name: "Devices", dependencies: ["Machine", "CKVM"]),
        .target(name: "HostTools"),
        // HMAC-SHA256 for snapshot seals, on Debian's Nettle.
        .target(name: "CCrypto", linkerSettings: [.linkedLibrary("nettle")]),
        // The jailer: namespaces, an empty root, no privileges, a cgroup.
        .target(name: "CJail"),
        .target(name: "Jail", dependencies: ["CJail"]),
        .target(name: "SkiffControl"),
        .target(name: "VMM", dependencies: ["Devices", "Machine", "KVM", "CKVM", "HostTools", "CCrypto", "SkiffControl"]),
        .target(name: "Appliance", dependencies: ["HostTools"]),
        .executableTarget(name: "skiff", dependencies: ["VMM", "Appliance", "HostTools", "Jail", "SkiffControl"]),
        .testTarget(name: "MachineTests", dependencies: ["Machine", "Devices"]),
        .testTarget(name: "X86EmulatorTests", dependencies: ["X86Emulator"]),
        .testTarget(name: "ApplianceTests", dependencies: ["Appliance"]),
        .testTarget(name: "SkiffTests", dependencies: ["Appliance", "Machine", "SkiffControl"]),
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
