// The legacy policies, modelled rather than run on the core: Linux's module_alloc as it was from 6.4
// to 6.9. Each allocation is a page-granular vmalloc area in the module range (lowest first fit, one
// guard page after it), backed by 4 KiB frames and mapped by 4 KiB PTEs; text and read-only data get
// set_memory_ro/x page by page, which splits the direct-map large page of every frame touched.
// With bpf_prog_pack, BPF programs go to 64-byte chunks of 2 MiB packs instead: a huge vmalloc mapped
// by one PMD and one physical large page, made read-only-executable once, whole.

import ExecMem

final class LegacyPolicy: SimPolicy {
    public let kind: PolicyKind
    let physical: PhysicalMemory
    let pages: Int
    /// Free page runs of the module range, by start, sorted.
    private var free: [(start: Int, count: Int)]
    /// Type of every page of the range, for the map (255 = free, 254 = guard).
    private var pageType: [UInt8]
    private var live: [Int: Area] = [:]
    private var nextID = 0
    private var failures = 0

    struct Area {
        var cls: MemoryClass
        var size: Int
        var start: Int
        var pages: Int
        var frames: [Int]
        /// For packed allocations: the pack (or probe page) and first chunk.
        var pack: (Int, Int, Int)? = nil
    }

    /// bpf_prog_pack's packs, and the pages kprobes carve into instruction slots.
    private var packs: [Int: Pack] = [:]
    private var probePages: [Int: Pack] = [:]

    struct Pack {
        var area: Int
        var bitmap: ChunkBitmap
        var used = 0
        var large: Int?
    }

    init(kind: PolicyKind, rangeSize: Int, physical: PhysicalMemory) {
        self.kind = kind
        self.physical = physical
        pages = rangeSize >> 12
        free = [(0, pages)]
        pageType = [UInt8](repeating: 255, count: pages)
    }

    // MARK: - vmalloc in the module range

    /// First fit of `count` pages (+ a guard page) at an address aligned to `alignment` pages.
    private func reserve(_ count: Int, alignment: Int = 1) -> Int? {
        for (i, run) in free.enumerated() {
            let start = (run.start + alignment - 1) / alignment * alignment
            guard start + count + 1 <= run.start + run.count else { continue }
            let end = start + count + 1
            var replacement: [(Int, Int)] = []
            if start > run.start { replacement.append((run.start, start - run.start)) }
            if end < run.start + run.count { replacement.append((end, run.start + run.count - end)) }
            free.replaceSubrange(i...i, with: replacement)
            pageType[start + count] = 254
            return start
        }
        return nil
    }

    private func unreserve(_ start: Int, _ count: Int) {
        let n = count + 1
        for p in start..<(start + n) { pageType[p] = 255 }
        var i = free.firstIndex { $0.start > start } ?? free.count
        free.insert((start, n), at: i)
        if i + 1 < free.count && free[i].start + free[i].count == free[i + 1].start {
            free[i].count += free[i + 1].count
            free.remove(at: i + 1)
        }
        if i > 0 && free[i - 1].start + free[i - 1].count == free[i].start {
            free[i - 1].count += free[i].count
            free.remove(at: i)
            i -= 1
        }
    }

    /// module_alloc + set_memory_* for one area of 4 KiB pages.
    private func vmalloc(_ cls: MemoryClass, bytes: Int) -> Area? {
        let n = max(1, (bytes + 4095) >> 12)
        guard let start = reserve(n) else { return nil }
        var frames: [Int] = []
        for p in start..<(start + n) {
            guard let f = physical.allocateFrame() else {
                for f in frames { physical.freeFrame(f) }
                unreserve(start, n)
                return nil
            }
            frames.append(f)
            pageType[p] = UInt8(cls.type.rawValue)
        }
        // Text and read-only data are protected page by page (set_memory_ro / set_memory_x).
        if cls.type == .text || cls.type == .rodata { for f in frames { physical.protectFrame(f) } }
        return Area(cls: cls, size: bytes, start: start, pages: n, frames: frames)
    }

    private func vfree(_ a: Area) {
        for f in a.frames { physical.freeFrame(f) }
        unreserve(a.start, a.pages)
    }

    // MARK: - SimPolicy

    public func allocate(_ c: MemoryClass, size: Int) -> Int? {
        let area: Area?
        switch c {
        case .bpf where kind == .legacyPack:
            area = packed(&packs, bytes: size, packPages: 512, huge: true, cls: c)
        case .probe:
            area = packed(&probePages, bytes: size, packPages: 1, huge: false, cls: c)
        default:
            area = vmalloc(c, bytes: size)
        }
        guard let area else { failures += 1; return nil }
        nextID += 1
        live[nextID] = area
        return nextID
    }

    /// 64-byte chunks of shared areas: bpf_prog_pack's 2 MiB packs, or kprobes' slot pages.
    private func packed(_ pool: inout [Int: Pack], bytes: Int, packPages: Int, huge: Bool, cls: MemoryClass) -> Area? {
        let chunks = (bytes + 63) >> 6
        guard chunks <= packPages * 64 else { return vmalloc(cls, bytes: bytes) }  // too big for a pack
        for key in pool.keys.sorted() where pool[key]!.used + chunks <= pool[key]!.bitmap.count {
            if let first = pool[key]!.bitmap.findClearRun(length: chunks, alignment: 1, from: 0) {
                pool[key]!.bitmap.assign(true, start: first, length: chunks)
                pool[key]!.used += chunks
                return Area(cls: cls, size: bytes, start: key, pages: 0, frames: [], pack: (key, first, chunks))
            }
        }
        // A new pack: 2 MiB aligned and huge-mapped for BPF, one page for probe slots.
        guard let start = reserve(packPages, alignment: packPages) else { return nil }
        var pack = Pack(area: start, bitmap: ChunkBitmap(count: packPages * 64))
        if huge {
            guard let l = physical.allocateLarge() else { unreserve(start, packPages); return nil }
            pack.large = l  // set_memory_rox on the whole pack: no split
        } else {
            guard let f = physical.allocateFrame() else { unreserve(start, packPages); return nil }
            pack.large = f
            physical.protectFrame(f)  // set_memory_rox on one page of the direct map
        }
        for p in start..<(start + packPages) { pageType[p] = UInt8(ExecMemType.text.rawValue) }
        pack.bitmap.assign(true, start: 0, length: chunks)
        pack.used = chunks
        pool[start] = pack
        return Area(cls: cls, size: bytes, start: start, pages: 0, frames: [], pack: (start, 0, chunks))
    }

    public func free(_ id: Int) {
        guard let a = live.removeValue(forKey: id) else { return }
        guard let (key, first, chunks) = a.pack else { vfree(a); return }
        let isBPF = a.cls == .bpf
        var pack = isBPF ? packs[key]! : probePages[key]!
        pack.bitmap.assign(false, start: first, length: chunks)
        pack.used -= chunks
        if pack.used == 0 {  // an empty pack goes back
            if isBPF { physical.freeLargePage(pack.large!); packs[key] = nil } else { physical.freeFrame(pack.large!); probePages[key] = nil }
            unreserve(key, pack.bitmap.count / 64)
        } else if isBPF {
            packs[key] = pack
        } else {
            probePages[key] = pack
        }
    }

    public func seal(_ id: Int) {
        guard let a = live[id] else { return }
        for f in a.frames { physical.protectFrame(f) }  // module_enable_rodata_ro_after_init
    }

    public func measure() -> Measure {
        var m = Measure()
        for a in live.values where a.pack == nil {
            m.smallBytes[a.cls.type.rawValue] += a.pages << 12
            m.usedBytes += a.size
            if a.cls.type == .text { m.textEntries += a.pages }
        }
        for a in live.values where a.pack != nil { m.usedBytes += a.size }
        m.hugeBytes[ExecMemType.text.rawValue] = packs.count << 21
        m.smallBytes[ExecMemType.text.rawValue] += probePages.count << 12
        m.textEntries += packs.count + probePages.count
        m.directMapSplits = physical.splits
        m.reservedBytes = physical.bytesInUse
        m.rangeUsedBytes = (pages - free.reduce(0) { $0 + $1.count }) << 12
        m.failures = failures
        return m
    }

    public func slotMap() -> [ExecMemType?] {
        stride(from: 0, to: pages, by: 512).map { s in
            var counts = [Int](repeating: 0, count: 4)
            for p in s..<min(s + 512, pages) where pageType[p] < 4 { counts[Int(pageType[p])] += 1 }
            guard let best = counts.indices.max(by: { counts[$0] < counts[$1] }), counts[best] > 0 else { return nil }
            return ExecMemType(rawValue: best)
        }
    }
}
