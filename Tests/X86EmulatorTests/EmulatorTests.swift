import XCTest
@testable import X86Emulator

final class XSaveTests: XCTestCase {
    /// KVM's image with distinct x87, SSE and AVX contents, all in use.
    func filledImage(_ m: TestMachine) {
        m.xstate.image.setLE(0, 2, 0x37f)
        m.xstate.image.setLE(2, 2, 0x3800)
        m.xstate.image.setLE(8, 8, 0xffff_ffff_8100_1234) // FIP
        m.xstate.image.setLE(24, 4, 0x1f80)
        m.xstate.image.setLE(28, 4, 0xffff)
        for i in 32..<160 { m.xstate.image[i] = UInt8(i & 0x7f) }
        for i in 160..<416 { m.xstate.image[i] = UInt8((i * 7) & 0xff) }
        for i in 576..<832 { m.xstate.image[i] = UInt8((i * 13) & 0xff) | 1 }
        m.xstate.image.setLE(512, 8, 7)
    }

    func machine(area: UInt64 = 0x10_0000) -> TestMachine {
        var m = TestMachine()
        m.state.gpr[7] = area
        m.state.gpr[0] = 0xffff_ffff; m.state.gpr[2] = 0xffff_ffff
        filledImage(m)
        return m
    }

    func testXSave64WritesTheStandardLayout() {
        let m = machine()
        let (s, e) = m.complete([0x48, 0x0f, 0xae, 0x27])
        XCTAssertNil(e)
        XCTAssertEqual(s.rip, m.state.rip + 4)
        let area = Array(m.memory.bytes[0x10_0000..<0x10_0000 + 832])
        XCTAssertEqual(Array(area[0..<160]), Array(m.xstate.image[0..<160]))
        XCTAssertEqual(Array(area[160..<416]), Array(m.xstate.image[160..<416]))
        XCTAssertEqual(Array(area[576..<832]), Array(m.xstate.image[576..<832]), "upper halves of YMM")
        XCTAssertEqual(area.le(512, 8), 7)      // XSTATE_BV
        XCTAssertEqual(area.le(520, 8), 0)      // XCOMP_BV untouched
    }

    func testRequestedFeatureBitmapLimitsWhatIsSaved() {
        var m = machine()
        m.state.gpr[0] = 3; m.state.gpr[2] = 0   // x87 and SSE only
        m.memory.set(0x10_0000 + 512, 0x4)       // an old AVX bit stays
        _ = m.complete([0x48, 0x0f, 0xae, 0x27])
        XCTAssertEqual(m.memory.u64(0x10_0000 + 512), 7)
        XCTAssertTrue(m.memory.bytes[0x10_0000 + 576..<0x10_0000 + 832].allSatisfy { $0 == 0 }, "AVX not requested, not written")
    }

    func testXSaveCThenXRstorRoundTripsThroughTheCompactedLayout() {
        let m = machine()
        _ = m.complete([0x48, 0x0f, 0xc7, 0x27])                 // xsavec
        XCTAssertEqual(m.memory.u64(0x10_0000 + 520), 7 | 1 << 63)
        let saved = m.xstate.image
        // Another process's state is loaded...
        for i in 160..<416 { m.xstate.image[i] = 0xee }
        for i in 576..<832 { m.xstate.image[i] = 0xdd }
        // ...and the first one's restored from memory.
        let (_, e) = m.complete([0x48, 0x0f, 0xae, 0x2f])        // xrstor
        XCTAssertNil(e)
        XCTAssertEqual(Array(m.xstate.image[160..<416]), Array(saved[160..<416]))
        XCTAssertEqual(Array(m.xstate.image[576..<832]), Array(saved[576..<832]))
        XCTAssertEqual(m.xstate.image.le(512, 8), 7)
    }

    func testXRstorOfAnInitComponentZeroesIt() {
        let m = machine()
        _ = m.complete([0x48, 0x0f, 0xae, 0x27])
        m.memory.set(0x10_0000 + 512, 3)                          // AVX in its initial state
        _ = m.complete([0x48, 0x0f, 0xae, 0x2f])
        XCTAssertTrue(m.xstate.image[576..<832].allSatisfy { $0 == 0 })
        XCTAssertEqual(m.xstate.image.le(512, 8) & 4, 0)
    }

    func testXRstorRejectsBadHeadersAndMXCSR() {
        let m = machine()
        _ = m.complete([0x48, 0x0f, 0xae, 0x27])
        let good = m.memory.bytes
        m.memory.set(0x10_0000 + 528, 1)                          // reserved header bytes
        XCTAssertEqual(m.complete([0x48, 0x0f, 0xae, 0x2f]).1, .generalProtection())
        m.memory.bytes = good
        m.memory.set(0x10_0000 + 512, 0x100)                      // a component XCR0 lacks
        XCTAssertEqual(m.complete([0x48, 0x0f, 0xae, 0x2f]).1, .generalProtection())
        m.memory.bytes = good
        m.memory.set(0x10_0000 + 24, 0x1_0000, size: 4)           // MXCSR reserved bit
        XCTAssertEqual(m.complete([0x48, 0x0f, 0xae, 0x2f]).1, .generalProtection())
        XCTAssertEqual(m.xstate.sets, 0, "a faulting XRSTOR changes nothing")
        m.memory.bytes = good
        XCTAssertEqual(m.complete([0x48, 0x0f, 0xc7, 0x1f]).1, .generalProtection(), "XRSTORS of a standard-layout area")
    }

    func testXSaveFaultsAsHardwareDoes() {
        var m = machine(area: 0x10_0008)
        XCTAssertEqual(m.complete([0x48, 0x0f, 0xae, 0x27]).1, .generalProtection(), "misaligned")
        m = machine(area: 0x40_0000)
        let (s, e) = m.complete([0x48, 0x0f, 0xae, 0x27])
        XCTAssertEqual(e, .pageFault(0x40_0000, code: PFError.write), "not present")
        XCTAssertEqual(s.cr2, 0x40_0000)
        XCTAssertEqual(s.rip, m.state.rip, "a fault leaves RIP at the instruction")
        // Straddling into an unmapped page: nothing written to the first.
        m = machine(area: 0x3f_ff00)
        XCTAssertEqual(m.complete([0x48, 0x0f, 0xae, 0x27]).1?.vector, 14)
        XCTAssertTrue(m.memory.bytes[0x3f_ff00..<0x40_0000].allSatisfy { $0 == 0 })
        m = machine()
        m.state.cr0 |= CR0.ts
        XCTAssertEqual(m.complete([0x48, 0x0f, 0xae, 0x27]).1, .deviceNotAvailable)
        m = machine()
        m.state.cr4 &= ~CR4.osxsave
        XCTAssertEqual(m.complete([0x48, 0x0f, 0xae, 0x27]).1, .invalidOpcode)
        m = machine()
        m.state.cs.selector = 0x33
        XCTAssertEqual(m.complete([0x48, 0x0f, 0xc7, 0x2f]).1, .generalProtection(), "XSAVES at CPL3")
        // A supervisor page, written from kernel mode with CR0.WP and R/W clear.
        m = machine()
        m.memory.set(0x3000, 0x81)
        XCTAssertEqual(m.complete([0x48, 0x0f, 0xae, 0x27]).1, .pageFault(0x10_0000, code: PFError.present | PFError.write))
    }

    func testPageTableBitsAreSetAndReservedBitsFault() {
        var m = machine()
        _ = m.complete([0x48, 0x0f, 0xae, 0x27])
        XCTAssertEqual(m.memory.u64(0x3000) & 0x60, 0x60, "accessed and dirty on the leaf")
        XCTAssertEqual(m.memory.u64(0x1000) & 0x20, 0x20, "accessed on the top level")
        m = machine()
        m.memory.set(0x3000, 0x83 | 1 << 51)
        XCTAssertEqual(m.complete([0x48, 0x0f, 0xae, 0x27]).1, .pageFault(0x10_0000, code: PFError.present | PFError.write | PFError.reserved))
        m = machine()
        m.memory.set(0x1000, 0x7fff_0000_0007)                     // a page table outside RAM
        XCTAssertEqual(m.complete([0x48, 0x0f, 0xae, 0x27]).1?.vector, 14)
    }
}

final class InstructionTests: XCTestCase {
    func testInt3TrapsAfterItself() {
        let m = TestMachine()
        let (s, e) = m.complete([0xcc])
        XCTAssertEqual(e, .breakpoint)
        XCTAssertEqual(s.rip, m.state.rip + 1)
    }

    func testPopcnt() {
        var m = TestMachine()
        m.state.gpr[3] = 0xffff_0000_00ff_00ff
        m.state.gpr[0] = 0xdead_beef_dead_beef
        m.state.rflags |= RFlags.cf | RFlags.zf
        var (s, _) = m.complete([0xf3, 0x48, 0x0f, 0xb8, 0xc3])
        XCTAssertEqual(s.gpr[0], 32)
        XCTAssertEqual(s.rflags & RFlags.status, 0)
        (s, _) = m.complete([0xf3, 0x0f, 0xb8, 0xc3])               // 32-bit: upper half zeroed
        XCTAssertEqual(s.gpr[0], 16)
        (s, _) = m.complete([0x66, 0xf3, 0x0f, 0xb8, 0xc3])         // 16-bit: the rest kept
        XCTAssertEqual(s.gpr[0], 0xdead_beef_dead_0008)
        m.state.gpr[3] = 0
        (s, _) = m.complete([0xf3, 0x48, 0x0f, 0xb8, 0xc3])
        XCTAssertEqual(s.rflags & RFlags.zf, RFlags.zf)
    }

    func testCmpxchg16b() {
        var m = TestMachine()
        m.memory.set(0x10_0100, 1); m.memory.set(0x10_0108, 2)
        m.state.gpr[6] = 0x10_0100
        (m.state.gpr[0], m.state.gpr[2], m.state.gpr[3], m.state.gpr[1]) = (1, 2, 3, 4)
        var (s, _) = m.complete([0xf0, 0x48, 0x0f, 0xc7, 0x0e])
        XCTAssertEqual(s.rflags & RFlags.zf, RFlags.zf)
        XCTAssertEqual([m.memory.u64(0x10_0100), m.memory.u64(0x10_0108)], [3, 4])
        (s, _) = m.complete([0xf0, 0x48, 0x0f, 0xc7, 0x0e])        // now it differs
        XCTAssertEqual(s.rflags & RFlags.zf, 0)
        XCTAssertEqual([s.gpr[0], s.gpr[2]], [3, 4])
        m.state.gpr[6] = 0x10_0108
        XCTAssertEqual(m.complete([0xf0, 0x48, 0x0f, 0xc7, 0x0e]).1, .generalProtection(), "misaligned")
    }

    func testClacStacAndPrivilege() {
        var m = TestMachine()
        var (s, _) = m.complete([0x0f, 0x01, 0xcb])
        XCTAssertEqual(s.rflags & RFlags.ac, RFlags.ac)
        m.state = s
        (s, _) = m.complete([0x0f, 0x01, 0xca])
        XCTAssertEqual(s.rflags & RFlags.ac, 0)
        m.state.cs.selector = 0x33
        XCTAssertEqual(m.complete([0x0f, 0x01, 0xca]).1, .invalidOpcode)
    }

    func testX87StatusInstructions() {
        var m = TestMachine()
        m.xstate.image.setLE(2, 2, 0x38ff | 0x8000)
        let (_, e) = m.complete([0x9b])
        XCTAssertEqual(e, .x87FloatingPoint, "fwait delivers the pending exception")
        XCTAssertNil(m.complete([0xdb, 0xe2]).1)
        XCTAssertEqual(m.xstate.image.le(2, 2), 0x3800, "fnclex keeps TOP and C0-C3")
        XCTAssertNil(m.complete([0x9b]).1)
        m.state.cr0 |= CR0.ts
        XCTAssertEqual(m.complete([0xdb, 0xe2]).1, .deviceNotAvailable)
    }

    func testKernelFPUBeginsInstructions() {
        var m = TestMachine()
        m.state.cr4 |= CR4.osfxsr
        m.xstate.image.setLE(24, 4, 0x3f80); m.xstate.image.setLE(28, 4, 0xffff)
        m.xstate.image.setLE(0, 2, 0x27f); m.xstate.image.setLE(2, 2, 0x3801); m.xstate.image[4] = 0xff
        // Linux: movl $0x1f80, 4(%rsp); ldmxcsr 4(%rsp); fninit
        m.state.gpr[4] = 0x10_0f00
        m.memory.set(0x10_0f04, 0x1f80, size: 4)
        XCTAssertNil(m.complete([0x0f, 0xae, 0x54, 0x24, 0x04]).1)
        XCTAssertEqual(m.xstate.image.le(24, 4), 0x1f80)
        XCTAssertNil(m.complete([0xdb, 0xe3]).1)
        XCTAssertEqual([m.xstate.image.le(0, 2), m.xstate.image.le(2, 2), UInt64(m.xstate.image[4])], [0x37f, 0, 0])
        m.xstate.image.setLE(24, 4, 0x1fa0)
        XCTAssertNil(m.complete([0x0f, 0xae, 0x5c, 0x24, 0x08]).1)   // stmxcsr 8(%rsp)
        XCTAssertEqual(m.memory.u64(0x10_0f08) & 0xffff_ffff, 0x1fa0)
        m.memory.set(0x10_0f04, 0x1_0000, size: 4)
        XCTAssertEqual(m.complete([0x0f, 0xae, 0x54, 0x24, 0x04]).1, .generalProtection(), "reserved MXCSR bit")
        m.state.cr4 &= ~CR4.osfxsr
        XCTAssertEqual(m.complete([0x0f, 0xae, 0x54, 0x24, 0x04]).1, .invalidOpcode)
    }

    func testXGetBV() {
        var m = TestMachine()
        m.state.gpr[1] = 0
        let (s, _) = m.complete([0x0f, 0x01, 0xd0])
        XCTAssertEqual(s.gpr[0], 7); XCTAssertEqual(s.gpr[2], 0)
        m.state.gpr[1] = 5
        XCTAssertEqual(m.complete([0x0f, 0x01, 0xd0]).1, .generalProtection())
    }
}

final class DescriptorTests: XCTestCase {
    static func code64(dpl: UInt64) -> UInt64 { 0xffff | 0xf << 48 | 0xb << 40 | 1 << 44 | dpl << 45 | 1 << 47 | 1 << 53 | 1 << 55 }
    static func data(dpl: UInt64, limit: UInt64 = 0xfffff, granular: Bool = true) -> UInt64 {
        (limit & 0xffff) | ((limit >> 16) & 0xf) << 48 | 3 << 40 | 1 << 44 | dpl << 45 | 1 << 47 | 1 << 54 | (granular ? 1 << 55 : 0)
    }
    static func code32(dpl: UInt64) -> UInt64 { 0xffff | 0xf << 48 | 0xb << 40 | 1 << 44 | dpl << 45 | 1 << 47 | 1 << 54 | 1 << 55 }

    /// Linux's GDT layout: 0x10 kernel CS, 0x18 kernel DS, 0x2b user DS, 0x33 user CS, 0x7b CPUNODE.
    func linuxGDT(_ m: inout TestMachine) {
        let gdt = 0x5000
        m.memory.set(gdt + 0x10, Self.code64(dpl: 0))
        m.memory.set(gdt + 0x18, Self.data(dpl: 0))
        m.memory.set(gdt + 0x28, Self.data(dpl: 3))
        m.memory.set(gdt + 0x30, Self.code64(dpl: 3))
        m.memory.set(gdt + 0x78, Self.data(dpl: 3, limit: 0x1_0003, granular: false)) // node 1, cpu 3
        m.state.gdt = TableRegister(base: UInt64(gdt), limit: 0x7f)
    }

    func testLSLReadsLinuxsCPUNodeSegment() {
        var m = TestMachine()
        linuxGDT(&m)
        m.state.gpr[0] = 0x7b
        var (s, _) = m.complete([0x48, 0x0f, 0x03, 0xc0])
        XCTAssertEqual(s.gpr[0], 0x1_0003)
        XCTAssertEqual(s.rflags & RFlags.zf, RFlags.zf)
        m.state.gpr[0] = 0x80                                     // beyond the GDT's limit
        (s, _) = m.complete([0x48, 0x0f, 0x03, 0xc0])
        XCTAssertEqual(s.rflags & RFlags.zf, 0)
        XCTAssertEqual(s.gpr[0], 0x80, "unchanged when ZF is clear")
        m.state.gpr[0] = 0
        XCTAssertEqual(m.complete([0x48, 0x0f, 0x03, 0xc0]).0.rflags & RFlags.zf, 0, "null selector")
    }

    func testIretqToUserMode() {
        var m = TestMachine()
        linuxGDT(&m)
        let sp = 0x10_0f00
        for (i, v) in [0x40_1000, 0x33, 0x246, 0x7ff0, 0x2b].enumerated() { m.memory.set(sp + 8 * i, UInt64(v)) }
        m.state.gpr[4] = UInt64(sp)
        m.state.rflags = 0x46
        let (s, e) = m.complete([0x48, 0xcf])
        XCTAssertNil(e)
        XCTAssertEqual(s.rip, 0x40_1000)
        XCTAssertEqual(s.cpl, 3)
        XCTAssertEqual(s.cs.selector, 0x33); XCTAssertTrue(s.cs.long)
        XCTAssertEqual(s.ss.selector, 0x2b); XCTAssertEqual(s.ss.dpl, 3)
        XCTAssertEqual(s.gpr[4], 0x7ff0)
        XCTAssertEqual(s.rflags, 0x246)
        XCTAssertEqual(m.memory.u64(0x5030) >> 40 & 1, 1, "CS descriptor accessed")
    }

    func testIretChecksTheNewCodeSegment() {
        var m = TestMachine()
        linuxGDT(&m)
        let sp = 0x10_0f00
        m.state.gpr[4] = UInt64(sp)
        func frame(_ cs: UInt64, rip: UInt64 = 0x40_1000) { for (i, v) in [rip, cs, 0x246, 0x7ff0, 0x2b].enumerated() { m.memory.set(sp + 8 * i, v) } }
        frame(0x80)
        XCTAssertEqual(m.complete([0x48, 0xcf]).1, .generalProtection(0x80), "beyond the GDT")
        frame(0x2b)
        XCTAssertEqual(m.complete([0x48, 0xcf]).1, .generalProtection(0x28), "a data segment")
        frame(0x30)
        XCTAssertEqual(m.complete([0x48, 0xcf]).1, .generalProtection(0x30), "RPL 0 for a DPL 3 segment")
        frame(0x33, rip: 0x8000_0000_0000)
        XCTAssertEqual(m.complete([0x48, 0xcf]).1, .generalProtection(), "non-canonical RIP")
        m.state.rflags |= RFlags.nt
        frame(0x33)
        XCTAssertEqual(m.complete([0x48, 0xcf]).1, .generalProtection(), "NT in IA-32e mode")
    }

    func testThirtyTwoBitIretInProtectedMode() {
        var m = TestMachine()
        m.state.cr0 = CR0.pe
        m.state.efer = 0
        m.state.cr4 = 0
        m.state.cs.long = false; m.state.cs.defaultBig = true; m.state.cs.selector = 0x08
        m.state.ss.selector = 0x10
        m.memory.set(0x5008, Self.code32(dpl: 0))
        m.memory.set(0x5010, Self.data(dpl: 0))
        m.state.gdt = TableRegister(base: 0x5000, limit: 0x17)
        for (i, v) in [0x1234, 0x08, 0x202].enumerated() { m.memory.set(0x8000 + 4 * i, UInt64(v), size: 4) }
        m.state.gpr[4] = 0x8000
        let (s, e) = m.complete([0xcf])
        XCTAssertNil(e)
        XCTAssertEqual(s.rip, 0x1234)
        XCTAssertEqual(s.gpr[4], 0x800c)
        XCTAssertEqual(s.rflags, 0x202)
        XCTAssertEqual(s.cs.selector, 0x08)
    }
}
