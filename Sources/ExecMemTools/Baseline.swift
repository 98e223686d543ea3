// The baseline every JIT starts from (uBPF does exactly this): one mmap per piece of code, written
// while rw-, then mprotect to r-x; munmap on free. Each allocation costs at least a 4 KiB page, a VMA
// and an iTLB entry, and never shares a 2 MiB page.

import ExecMemSystem

struct MmapPerAllocation {
    static let page = 4096

    struct Code {
        let address: UInt
        let length: Int
    }

    /// mmap rw-, copy, mprotect r-x.
    static func install(_ bytes: UnsafeRawBufferPointer) throws -> Code {
        let length = (bytes.count + page - 1) & ~(page - 1)
        let address = try Sys.mmap(length: length, protection: [.read, .write],
                                   flags: SysConst.mapPrivate | SysConst.mapAnonymous)
        UnsafeMutableRawPointer(bitPattern: address)!.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        try Sys.mprotect(address: address, length: length, protection: [.read, .execute])
        return Code(address: address, length: length)
    }

    static func free(_ code: Code) throws {
        try Sys.munmap(address: code.address, length: code.length)
    }
}

/// Sizes from the published fleet figure: half of BPF programs under 500 B of JIT image, three
/// quarters under 2 KB, the rest up to 16 KB (Song Liu, execmem_alloc v5 cover letter, 2022).
struct FleetSizes {
    var rng: DemoRandom
    init(seed: UInt64) { rng = DemoRandom(seed: seed) }

    mutating func next() -> Int {
        let u = rng.next() % 4
        let r = Int(rng.next() >> 1)
        switch u {
        case 0, 1: return 64 + r % (500 - 64)
        case 2: return 500 + r % (2048 - 500)
        default: return 2048 + r % (16384 - 2048 + 1)
        }
    }
}
