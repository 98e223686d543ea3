// The unwinder sink: libgcc's `__register_frame` for every registration with call-frame information.
//
// A loaded module's own `.eh_frame` (relocated in place, with a zero terminator) is registered as is.
// Frames a JIT or a trampoline synthesizes are gathered per 2 MiB block into one `.eh_frame` the
// registry owns: libgcc (12) searches its registered objects one by one on every lookup, even for
// exceptions that never touch ExecMem's code, so the count of objects must stay near the count of
// blocks, not of programs. A block's table:
//
//   CIE (zR, FDE pointers absolute 8-byte, CFA = rsp + 8, return address at CFA - 8)
//   FDE FDE FDE ...            appended as code is registered
//   0 (u32)                    terminator
//
// Removing code zeroes its FDEs' pc_begin (libgcc skips those, as it does for discarded link-once
// code); the table is rebuilt when full or when half of it is dead. Changes are applied at flush,
// between a __deregister_frame and a __register_frame, so libgcc never reads a table being changed.

import CExecMemDebug

/// DW_CFA instructions for a synthesized frame, in the x86-64 DWARF register numbering.
/// A value built by one thread; the bytes it yields are safe to share.
public struct CFIProgram: Sendable, Hashable {
    /// The encoded instructions.
    public private(set) var bytes: [UInt8] = []
    private var at = 0

    /// DWARF register numbers (x86-64 psABI, figure 3.36).
    public enum Register: UInt8, Sendable {
        case rax = 0, rdx, rcx, rbx, rsi, rdi, rbp, rsp, r8, r9, r10, r11, r12, r13, r14, r15, returnAddress
    }

    /// An empty program: the state at a function's first instruction.
    public init() {}

    /// The following rules apply from `offset` bytes into the frame (DW_CFA_advance_loc*).
    public mutating func advance(to offset: Int) {
        precondition(offset >= at, "CFI offsets must not decrease")
        let delta = offset - at
        at = offset
        if delta == 0 { return }
        if delta < 0x40 {
            bytes.append(0x40 | UInt8(delta))
        } else if delta <= 0xFF {
            bytes += [0x02, UInt8(delta)]
        } else if delta <= 0xFFFF {
            bytes.append(0x03); bytes.appendLE(UInt16(delta))
        } else {
            bytes.append(0x04); bytes.appendLE(UInt32(delta))
        }
    }

    /// CFA = `register` + `offset` (DW_CFA_def_cfa).
    public mutating func defineCFA(_ register: Register, offset: Int) {
        bytes += [0x0C, register.rawValue]
        uleb(offset)
    }

    /// CFA = the current CFA register + `offset` (DW_CFA_def_cfa_offset).
    public mutating func cfaOffset(_ offset: Int) {
        bytes.append(0x0E)
        uleb(offset)
    }

    /// CFA = `register` + the current offset (DW_CFA_def_cfa_register).
    public mutating func cfaRegister(_ register: Register) {
        bytes += [0x0D, register.rawValue]
    }

    /// `register` was saved at CFA - `bytesBelowCFA` (DW_CFA_offset, data alignment -8).
    public mutating func saved(_ register: Register, at bytesBelowCFA: Int) {
        precondition(bytesBelowCFA > 0 && bytesBelowCFA % 8 == 0)
        bytes.append(0x80 | register.rawValue)
        uleb(bytesBelowCFA / 8)
    }

    /// `register` holds its caller's value again (DW_CFA_restore).
    public mutating func restored(_ register: Register) {
        bytes.append(0xC0 | register.rawValue)
    }

    /// `register` cannot be recovered (DW_CFA_undefined); for the return address, the walk ends here.
    public mutating func undefined(_ register: Register) {
        bytes.append(0x07)
        uleb(Int(register.rawValue))
    }

    /// CFA = the 8 bytes at `register` + `offset`, plus `plus` (DW_CFA_def_cfa_expression
    /// `breg; deref; plus_uconst`): for code that keeps the frame's stack pointer in memory.
    public mutating func defineCFA(loadedFrom register: Register, offset: Int, plus: Int) {
        var e: [UInt8] = [0x70 + register.rawValue]
        sleb(offset, into: &e)
        e.append(0x06)
        if plus != 0 { e.append(0x23); uleb(plus, into: &e) }
        bytes.append(0x0F)
        uleb(e.count)
        bytes += e
    }

    /// `register`'s value in the caller is the constant `value` (DW_CFA_val_expression `const8u`):
    /// for code whose "return address" is known when it is written (a probe slot resumes a fixed place).
    public mutating func value(_ register: Register, is value: UInt64) {
        bytes.append(0x16)
        uleb(Int(register.rawValue))
        uleb(9)
        bytes.append(0x0E)
        bytes.appendLE(value)
    }

    /// Pushes the current rules (DW_CFA_remember_state).
    public mutating func remember() { bytes.append(0x0A) }

    /// Pops the rules `remember` pushed (DW_CFA_restore_state).
    public mutating func restore() { bytes.append(0x0B) }

    private mutating func uleb(_ v: Int) { uleb(v, into: &bytes) }

    private func uleb(_ v: Int, into out: inout [UInt8]) { PerfUnwindInfo.uleb(UInt64(v), into: &out) }

    private func sleb(_ v: Int, into out: inout [UInt8]) { PerfUnwindInfo.sleb(Int64(v), into: &out) }
}

/// One block's synthesized `.eh_frame`.
struct BlockFrameTable {
    static let cie: [UInt8] = {
        // length, CIE id 0, version 1, "zR", code align 1, data align -8, RA = 16, aug length 1,
        // DW_EH_PE_absptr, DW_CFA_def_cfa rsp 8, DW_CFA_offset r16 1, padded to 8 with DW_CFA_nop.
        var body: [UInt8] = [0, 0, 0, 0, 1, 0x7A, 0x52, 0, 1, 0x78, 16, 1, 0x00, 0x0C, 7, 8, 0x90, 1]
        while (body.count + 4) % 8 != 0 { body.append(0) }
        var out: [UInt8] = []
        out.appendLE(UInt32(body.count))
        return out + body
    }()

    private(set) var buffer: UnsafeMutableRawBufferPointer
    private(set) var registered = false
    private var used = 0
    private var dead = 0
    private var frames: [UInt64: (UInt, [CodeFrame])] = [:]
    private var offsets: [UInt64: [Int]] = [:]
    private var pendingAdds: [UInt64] = []
    private var pendingRemovals: [[Int]] = []

    var isEmpty: Bool { frames.isEmpty }

    init(capacity: Int = 4096) {
        buffer = .allocate(byteCount: capacity, alignment: 16)
        buffer.copyBytes(from: Self.cie)
        used = Self.cie.count
        buffer.storeBytes(of: UInt32(0), toByteOffset: used, as: UInt32.self)
    }

    static func fdeSize(_ f: CodeFrame) -> Int { (4 + 4 + 16 + 1 + f.instructions.count + 7) & ~7 }

    mutating func add(_ id: UInt64, base: UInt, _ list: [CodeFrame]) {
        frames[id] = (base, list)
        pendingAdds.append(id)
    }

    mutating func remove(_ id: UInt64) {
        guard frames.removeValue(forKey: id) != nil else { return }
        if let i = pendingAdds.firstIndex(of: id) { pendingAdds.remove(at: i); return }
        if let o = offsets.removeValue(forKey: id) { pendingRemovals.append(o) }
    }

    /// Applies pending changes between deregistering and registering the table.
    mutating func flush() {
        if pendingAdds.isEmpty && pendingRemovals.isEmpty { return }
        if registered { cem_deregister_frame(buffer.baseAddress!); registered = false }
        for list in pendingRemovals {
            for o in list {
                dead += Self.clearFDE(in: buffer, at: o)
            }
        }
        pendingRemovals.removeAll()
        let adding = pendingAdds.reduce(0) { sum, id in sum + frames[id]!.1.reduce(0) { $0 + Self.fdeSize($1) } }
        if dead > 4096 && dead * 2 > used {
            rebuild(room: adding)
        } else {
            if used + adding + 4 > buffer.count {
                // FDE offsets are relative to the table: growing is a copy.
                let bigger = UnsafeMutableRawBufferPointer.allocate(byteCount: max(buffer.count * 2, used + adding + 4), alignment: 16)
                bigger.baseAddress!.copyMemory(from: buffer.baseAddress!, byteCount: used)
                buffer.deallocate()
                buffer = bigger
            }
            for id in pendingAdds { write(id) }
        }
        pendingAdds.removeAll()
        buffer.storeBytes(of: UInt32(0), toByteOffset: used, as: UInt32.self)
        if !frames.isEmpty {
            cem_register_frame(buffer.baseAddress!)
            registered = true
        }
    }

    private mutating func rebuild(room: Int) {
        let live = frames.values.reduce(0) { s, f in s + f.1.reduce(0) { $0 + Self.fdeSize($1) } }
        let capacity = max(4096, (Self.cie.count + live + room + 4) * 2)
        buffer.deallocate()
        buffer = .allocate(byteCount: capacity, alignment: 16)
        buffer.copyBytes(from: Self.cie)
        used = Self.cie.count
        dead = 0
        offsets = [:]
        for id in frames.keys.sorted() { write(id) }
    }

    private mutating func write(_ id: UInt64) {
        let (base, list) = frames[id]!
        var mine: [Int] = []
        for f in list {
            mine.append(used)
            used += Self.writeFDE(f, base: base, into: buffer, at: used, cie: 0)
        }
        offsets[id] = mine
    }

    /// Writes `f`'s FDE (absolute pc_begin, for code at `base + f.offset`) at `at`, pointing back to
    /// the CIE at `cie`; returns its size. The GDB sink writes the same FDEs into its symbol files.
    static func writeFDE(_ f: CodeFrame, base: UInt, into buffer: UnsafeMutableRawBufferPointer, at: Int, cie: Int) -> Int {
        let size = fdeSize(f)
        buffer.storeBytes(of: UInt32(size - 4).littleEndian, toByteOffset: at, as: UInt32.self)
        buffer.storeBytes(of: UInt32(at + 4 - cie).littleEndian, toByteOffset: at + 4, as: UInt32.self)
        buffer.storeBytes(of: UInt64(base + UInt(f.offset)).littleEndian, toByteOffset: at + 8, as: UInt64.self)
        buffer.storeBytes(of: UInt64(f.length).littleEndian, toByteOffset: at + 16, as: UInt64.self)
        buffer.storeBytes(of: UInt8(0), toByteOffset: at + 24, as: UInt8.self)
        for (i, b) in f.instructions.enumerated() { buffer.storeBytes(of: b, toByteOffset: at + 25 + i, as: UInt8.self) }
        for i in (25 + f.instructions.count)..<size { buffer.storeBytes(of: UInt8(0), toByteOffset: at + i, as: UInt8.self) }
        return size
    }

    /// Empties the FDE at `at` (pc_begin and range 0: libgcc and GDB skip it); returns its size.
    static func clearFDE(in buffer: UnsafeMutableRawBufferPointer, at: Int) -> Int {
        buffer.storeBytes(of: UInt64(0), toByteOffset: at + 8, as: UInt64.self)
        buffer.storeBytes(of: UInt64(0), toByteOffset: at + 16, as: UInt64.self)
        return Int(UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: at, as: UInt32.self))) + 4
    }

    mutating func release() {
        if registered { cem_deregister_frame(buffer.baseAddress!); registered = false }
        buffer.deallocate()
    }
}

struct UnwindSink: ~Copyable {
    private var sections: [UInt64: UInt] = [:]
    private var tables: [UInt: BlockFrameTable] = [:]
    private var dirty: Set<UInt> = []

    var sectionCount: Int { sections.count + tables.values.filter(\.registered).count }

    mutating func add(_ id: UInt64, _ r: CodeRegistration) {
        switch r.unwind {
        case .section(let address)?:
            cem_register_frame(UnsafeRawPointer(bitPattern: address)!)
            sections[id] = address
        case .frames(let list)? where !list.isEmpty:
            let block = r.address >> UInt(ExecMemGeometry.blockShift)
            tables[block, default: BlockFrameTable()].add(id, base: r.address, list)
            dirty.insert(block)
        default:
            break
        }
    }

    mutating func remove(_ id: UInt64, _ r: CodeRegistration) {
        if let address = sections.removeValue(forKey: id) {
            cem_deregister_frame(UnsafeRawPointer(bitPattern: address)!)
            return
        }
        let block = r.address >> UInt(ExecMemGeometry.blockShift)
        guard tables[block] != nil else { return }
        tables[block]!.remove(id)
        dirty.insert(block)
    }

    mutating func flush() {
        for block in dirty {
            guard tables[block] != nil else { continue }
            tables[block]!.flush()
            if tables[block]!.isEmpty {
                tables[block]!.release()
                tables[block] = nil
            }
        }
        dirty.removeAll(keepingCapacity: true)
    }
}
