/// One bit per 4 KiB page of a memory region.
public struct PageBitmap: Equatable, Sendable {
    public private(set) var words: [UInt64]
    public let pages: Int

    public init(pages: Int) {
        self.pages = pages
        words = [UInt64](repeating: 0, count: (pages + 63) / 64)
    }

    /// From saved words; bits past `pages` must be clear.
    public init?(pages: Int, words: [UInt64]) {
        guard words.count == (pages + 63) / 64 else { return nil }
        if pages % 64 != 0, let last = words.last, last >> UInt64(pages % 64) != 0 { return nil }
        self.pages = pages
        self.words = words
    }

    public subscript(page: Int) -> Bool {
        get { words[page / 64] & (1 << UInt64(page % 64)) != 0 }
        set {
            if newValue { words[page / 64] |= 1 << UInt64(page % 64) } else { words[page / 64] &= ~(1 << UInt64(page % 64)) }
        }
    }

    public mutating func insert(_ range: Range<Int>) {
        for p in range.clamped(to: 0..<pages) { self[p] = true }
    }

    public mutating func formUnion(_ other: PageBitmap) {
        for i in words.indices where i < other.words.count { words[i] |= other.words[i] }
    }

    /// Lets a C-style producer (KVM's dirty log) OR bits in.
    public mutating func withWords<R>(_ body: (UnsafeMutablePointer<UInt64>) throws -> R) rethrows -> R {
        try words.withUnsafeMutableBufferPointer { try body($0.baseAddress!) }
    }

    public var count: Int { words.reduce(0) { $0 + $1.nonzeroBitCount } }

    /// Maximal runs of set pages, in order.
    public var runs: [Range<Int>] {
        var result: [Range<Int>] = []
        var start: Int?
        for (w, word) in words.enumerated() {
            if word == 0, start == nil { continue }
            if word == ~0, start != nil { continue }
            for bit in 0..<64 {
                let page = w * 64 + bit
                guard page < pages else { break }
                let set = word & (1 << UInt64(bit)) != 0
                if set, start == nil { start = page }
                if !set, let s = start { result.append(s..<page); start = nil }
            }
        }
        if let s = start { result.append(s..<pages) }
        return result
    }
}

/// A snapshot memory file under restored RAM: the base has all its pages
/// (`pages` nil), a diff only those its bitmaps (one per region) mark.
public struct MemoryLayer: Sendable {
    public let fd: Int32
    public let pages: [PageBitmap]?
    public init(fd: Int32, pages: [PageBitmap]?) { self.fd = fd; self.pages = pages }
}
