// The simulated kernel address space: physical memory with its direct map (mapped by 2 MiB pages),
// and the module range's page tables (2 MiB PMD entries or 4 KiB PTEs). What it counts is what the
// seed is about: direct-map large pages split when a protection changes on a 4 KiB piece of them
// (set_memory_ro/x on module pages splits their direct-map alias, as x86's CPA does), PMDs split in
// the module range, and how many bytes each kind of entry maps.

import ExecMem

/// Where 4 KiB frames come from.
public enum FramePlacement: String, Sendable, CaseIterable, Codable {
    /// A freshly booted machine: consecutive frames fill one large page after another.
    case contiguous
    /// A machine that has been up a while: free 4 KiB frames are scattered over all of memory, so
    /// consecutive allocations land in different large pages.
    case scattered
}

/// Physical memory: 4 KiB frames grouped in 2 MiB large pages, each mapped by one direct-map entry
/// until a protection change on part of it splits it.
final class PhysicalMemory {
    static let framesPerLarge = 512
    let largePages: Int
    let placement: FramePlacement
    private var rng: SplitMix64
    private var freeLarge: [Int]
    private var freeFrames: [Int] = []
    private var cursor: (large: Int, next: Int)? = nil
    /// Frames handed out of each large page (a large page with any is no longer whole), and which
    /// large pages back 2 MiB mappings.
    private var brokenUp: [Int]
    private var whole: [Bool]
    private(set) var split: [Bool]
    private(set) var splits = 0
    private(set) var framesInUse = 0
    private(set) var largeInUse = 0

    init(bytes: Int, seed: UInt64, placement: FramePlacement = .scattered) {
        largePages = bytes >> 21
        self.placement = placement
        rng = SplitMix64(state: seed)
        // The buddy allocator hands out memory from all over: free large pages in a shuffled order.
        freeLarge = Array(0..<largePages).shuffled(using: &rng)
        split = [Bool](repeating: false, count: largePages)
        brokenUp = [Int](repeating: 0, count: largePages)
        whole = [Bool](repeating: false, count: largePages)
    }

    /// One 4 KiB frame: a freed one first; else the next of the current large page (contiguous) or
    /// one of a random large page (scattered).
    func allocateFrame() -> Int? {
        if let f = freeFrames.popLast() { framesInUse += 1; return f }
        switch placement {
        case .contiguous:
            if cursor == nil || cursor!.next == Self.framesPerLarge {
                guard let l = popWholeLarge() else { return nil }
                cursor = (l, 0)
            }
            defer { cursor!.next += 1 }
            framesInUse += 1
            brokenUp[cursor!.large] += 1
            return cursor!.large * Self.framesPerLarge + cursor!.next
        case .scattered:
            for _ in 0..<64 {
                let l = Int(rng.next() % UInt64(largePages))
                guard !whole[l], brokenUp[l] < Self.framesPerLarge else { continue }
                brokenUp[l] += 1
                framesInUse += 1
                return l * Self.framesPerLarge + brokenUp[l] - 1
            }
            return nil
        }
    }

    func freeFrame(_ f: Int) {
        framesInUse -= 1
        freeFrames.append(f)
    }

    private func popWholeLarge() -> Int? {
        while let l = freeLarge.popLast() {
            if brokenUp[l] == 0 && !whole[l] { return l }
        }
        return nil
    }

    /// A whole large page (for a 2 MiB mapping).
    func allocateLarge() -> Int? {
        guard let l = popWholeLarge() else { return nil }
        whole[l] = true
        largeInUse += 1
        return l
    }

    func freeLargePage(_ l: Int) {
        whole[l] = false
        largeInUse -= 1
        freeLarge.append(l)
    }

    /// A protection change on one frame: its large page's direct-map entry splits (once).
    func protectFrame(_ f: Int) {
        let l = f / Self.framesPerLarge
        if !split[l] { split[l] = true; splits += 1 }
    }

    /// Bytes of physical memory in use.
    var bytesInUse: Int { framesInUse * 4096 + largeInUse * (1 << 21) }
}

/// The allocator core's backend for the simulator: commits map 2 MiB blocks with PMD entries backed
/// by whole physical large pages (4 KiB types with PTEs), protections change whole blocks (no split)
/// or pages (a split), nothing is ever written.
final class SimulatedBackend: ExecMemBackend, @unchecked Sendable {
    let physical: PhysicalMemory
    let base: UInt
    /// Per committed run (by address): its large pages, or for PTE runs the frames of pages touched.
    private var large: [UInt: [Int]] = [:]
    private var frames: [UInt: [Int: Int]] = [:]
    private(set) var pmdSplits = 0

    init(physical: PhysicalMemory, base: UInt) {
        self.physical = physical
        self.base = base
    }

    var name: String { "simulated" }
    var hasMemory: Bool { false }

    func reserve(size: Int, at address: UInt?) throws(ExecMemError) -> UInt { address ?? base }
    func release(base: UInt, size: Int) {}

    func commit(rangeBase: UInt, rangeSize: Int, offset: Int, length: Int, type: ExecMemType) throws(ExecMemError) -> CommittedRun {
        let address = rangeBase + UInt(offset)
        if type.wantsHugePages {
            var pages: [Int] = []
            for _ in 0..<(length >> 21) {
                guard let l = physical.allocateLarge() else {
                    for p in pages { physical.freeLargePage(p) }
                    throw .rangeExhausted(kind: .moduleText, type: type, size: length, ranges: "simulated physical memory")
                }
                pages.append(l)
            }
            large[address] = pages
            return CommittedRun(address: address, length: length, type: type, hugeMapped: true)
        }
        frames[address] = [:]
        return CommittedRun(address: address, length: length, type: type, hugeMapped: false, note: "\(type) on 4 KiB pages")
    }

    func decommit(_ run: CommittedRun) {
        for l in large.removeValue(forKey: run.address) ?? [] { physical.freeLargePage(l) }
        for f in (frames.removeValue(forKey: run.address) ?? [:]).values { physical.freeFrame(f) }
    }

    func protect(_ run: CommittedRun, offset: Int, length: Int, _ protection: Protection) throws(ExecMemError) {
        if large[run.address] != nil {
            if offset % (1 << 21) != 0 || length % (1 << 21) != 0 { pmdSplits += 1 }  // a part of a PMD
            return
        }
        // 4 KiB pages: each touched page gets a frame; a protection change splits its alias.
        for page in (offset >> 12)..<((offset + length + 4095) >> 12) {
            let f = frame(run.address, page)
            if protection != .readWrite { physical.protectFrame(f) }
        }
    }

    /// The frame behind `page` of a PTE run, allocated on first use.
    func frame(_ run: UInt, _ page: Int) -> Int {
        if let f = frames[run]?[page] { return f }
        let f = physical.allocateFrame() ?? 0
        frames[run, default: [:]][page] = f
        return f
    }

    /// Makes sure the pages under `[offset, + length)` of a PTE run are backed (memory that was written).
    func touch(run: UInt, offset: Int, length: Int) {
        guard frames[run] != nil else { return }
        for page in (offset >> 12)..<((offset + length + 4095) >> 12) { _ = frame(run, page) }
    }

    func openWriteView(_ run: CommittedRun) throws(ExecMemError) -> UInt? { nil }
    func closeWriteView(_ run: CommittedRun, view: UInt) {}

    func hugeMappedBytes(of runs: [CommittedRun]) -> [Int] { runs.map { large[$0.address] != nil ? $0.length : 0 } }

    /// 4 KiB entries in use for PTE runs (pages touched).
    var pteCount: Int { frames.values.reduce(0) { $0 + $1.count } }
}
