import XCTest
@testable import X86Emulator

final class DecoderTests: XCTestCase {
    func decode(_ b: [UInt8], _ mode: CPUState.Mode = .long64) -> Instruction? {
        if case .instruction(let i) = Decoder.decode(b, mode: mode) { return i }
        return nil
    }

    func testLinuxXSaveFamilyForms() throws {
        // The exact bytes Linux 6.1 emits (arch/x86/kernel/fpu/xstate.h), with (%rdi).
        let forms: [([UInt8], Mnemonic)] = [
            ([0x48, 0x0f, 0xae, 0x27], .xsave), ([0x48, 0x0f, 0xae, 0x37], .xsaveopt),
            ([0x48, 0x0f, 0xc7, 0x27], .xsavec), ([0x48, 0x0f, 0xc7, 0x2f], .xsaves),
            ([0x48, 0x0f, 0xae, 0x2f], .xrstor), ([0x48, 0x0f, 0xc7, 0x1f], .xrstors),
        ]
        for (bytes, op) in forms {
            let i = try XCTUnwrap(decode(bytes + [0x90, 0x90]), "\(bytes)")
            XCTAssertEqual(i.operation, op)
            XCTAssertEqual(i.length, 4)
            XCTAssertTrue(i.rexW)
            XCTAssertEqual(i.memory, MemoryOperand(segment: .ds, base: 7, addressSize: 8))
        }
        // Without REX.W: the 32-bit layout of FIP/FDP.
        XCTAssertEqual(decode([0x0f, 0xae, 0x27])?.rexW, false)
    }

    func testAddressingForms() throws {
        // xsave 0x8(%rsp): SIB, disp8, SS by default.
        var i = try XCTUnwrap(decode([0x0f, 0xae, 0x64, 0x24, 0x08]))
        XCTAssertEqual(i.memory, MemoryOperand(segment: .ss, base: 4, displacement: 8, addressSize: 8))
        XCTAssertEqual(i.length, 5)
        // xsave 0x10(%rip)
        i = try XCTUnwrap(decode([0x0f, 0xae, 0x25, 0x10, 0, 0, 0]))
        XCTAssertEqual(i.memory?.ripRelative, true)
        XCTAssertEqual(i.memory?.displacement, 16)
        // xrstor %gs:-0x80(%r12,%r13,8): REX.XB, segment override, negative disp8.
        i = try XCTUnwrap(decode([0x65, 0x4b, 0x0f, 0xae, 0x6c, 0xec, 0x80]))
        XCTAssertEqual(i.operation, .xrstor)
        XCTAssertEqual(i.memory, MemoryOperand(segment: .gs, base: 12, index: 13, scale: 8, displacement: -128, addressSize: 8))
        // 32-bit mode: no REX (0x48 is dec eax there), disp32 absolute.
        XCTAssertEqual(Decoder.decode([0x48, 0x0f, 0xae, 0x27], mode: .protected(4)), .notEmulated)
        i = try XCTUnwrap(decode([0x0f, 0xae, 0x25, 0x00, 0x10, 0, 0], .protected(4)))
        XCTAssertEqual(i.memory, MemoryOperand(segment: .ds, displacement: 0x1000, addressSize: 4))
        // 16-bit addressing through 0x67 in 32-bit mode: [bp+si+4].
        i = try XCTUnwrap(decode([0x67, 0x0f, 0xae, 0x62, 0x04], .protected(4)))
        XCTAssertEqual(i.memory, MemoryOperand(segment: .ss, base: 5, index: 6, displacement: 4, addressSize: 2))
    }

    func testOtherInstructions() throws {
        XCTAssertEqual(decode([0xcc])?.operation, .int3)
        XCTAssertEqual(decode([0xcf])?.operandSize, 4)          // 32-bit iret in 64-bit mode
        XCTAssertEqual(decode([0x48, 0xcf])?.operandSize, 8)    // iretq
        XCTAssertEqual(decode([0x66, 0xcf], .protected(4))?.operandSize, 2)
        XCTAssertEqual(decode([0x9b])?.operation, .fwait)
        XCTAssertEqual(decode([0xdb, 0xe2])?.operation, .fnclex)
        XCTAssertEqual(decode([0x0f, 0x01, 0xca])?.operation, .clac)
        XCTAssertEqual(decode([0x0f, 0x01, 0xcb])?.operation, .stac)
        XCTAssertEqual(decode([0x0f, 0x01, 0xd0])?.operation, .xgetbv)
        let popcnt = try XCTUnwrap(decode([0xf3, 0x48, 0x0f, 0xb8, 0xc3]))
        XCTAssertEqual(popcnt.operation, .popcnt)
        XCTAssertEqual(popcnt.reg, 0); XCTAssertEqual(popcnt.rmRegister, 3); XCTAssertEqual(popcnt.operandSize, 8)
        let lsl = try XCTUnwrap(decode([0x48, 0x0f, 0x03, 0xc0]))   // Linux's FSGSBASE entry path
        XCTAssertEqual(lsl.operation, .lsl); XCTAssertEqual(lsl.rmRegister, 0)
        let cx = try XCTUnwrap(decode([0xf0, 0x48, 0x0f, 0xc7, 0x0e]))
        XCTAssertEqual(cx.operation, .cmpxchg16b); XCTAssertTrue(cx.lock)
    }

    func testEncodingsHardwareRejects() {
        XCTAssertEqual(Decoder.decode([0xf0, 0xf3, 0x0f, 0xb8, 0xc0], mode: .long64), .fault(.invalidOpcode)) // LOCK popcnt
        XCTAssertEqual(Decoder.decode([0xf0, 0x0f, 0xae, 0x27], mode: .long64), .fault(.invalidOpcode))       // LOCK xsave
        XCTAssertEqual(Decoder.decode([0x48, 0x0f, 0xc7, 0xc8], mode: .long64), .fault(.invalidOpcode))       // cmpxchg16b with a register
        XCTAssertEqual(Decoder.decode(Array(repeating: 0x66, count: 14) + [0xcc], mode: .long64).length, 15)      // 15 bytes: legal
        XCTAssertEqual(Decoder.decode(Array(repeating: 0x66, count: 15) + [0xcc], mode: .long64), .fault(.generalProtection())) // 16
        XCTAssertEqual(Decoder.decode(Array(repeating: 0x2e, count: 20), mode: .long64), .fault(.generalProtection()))
    }

    func testWhatIsNotOurs() {
        XCTAssertEqual(Decoder.decode([0x0f, 0x0b], mode: .long64), .notEmulated)                   // ud2
        XCTAssertEqual(Decoder.decode([0xf2, 0x0f, 0x38, 0xf1, 0xc0], mode: .long64), .notEmulated) // crc32
        XCTAssertEqual(Decoder.decode([0x0f, 0xae, 0xe8], mode: .long64), .notEmulated)             // lfence
        XCTAssertEqual(Decoder.decode([0x66, 0x0f, 0xae, 0x37], mode: .long64), .notEmulated)       // clwb
        XCTAssertEqual(Decoder.decode([0x0f, 0xc7, 0x0e], mode: .long64), .notEmulated)             // cmpxchg8b: KVM's
        XCTAssertEqual(Decoder.decode([0xcc], mode: .real), .notEmulated)
        XCTAssertEqual(Decoder.decode([], mode: .long64), .truncated)
        XCTAssertEqual(Decoder.decode([0x48, 0x0f, 0xae, 0x64, 0x24], mode: .long64), .truncated)
    }
}

extension DecodeResult {
    var length: Int? { if case .instruction(let i) = self { return i.length }; return nil }
}
