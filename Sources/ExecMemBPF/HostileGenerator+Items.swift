// The items hostile and arbitrary programs are made of, beyond control flow: memory accesses
// through every base a function holds (stack, context, a pointer argument, a map value), pointer
// arithmetic and spills, helper and local calls, map operations, and the hostile items (infinite
// loops, out-of-bounds and cross-region accesses, reads of clobbered registers and of the stack
// before it is written, accesses beyond the frame, misaligned atomics, jumps into other functions).
// Each item records its shapes; plausible items keep the invariants HostileGenerator.swift lists.

extension BPFHostileGenerator {
    // MARK: - Memory

    /// The memory this function may address: (base register, readable bytes, writable bytes, shape).
    var bases: [(UInt8, Range<Int>, Range<Int>, Shape)] {
        var b: [(UInt8, Range<Int>, Range<Int>, Shape)] = [(10, -64..<0, -BPF.stackSize..<0, .stackAccess)]
        if let c = scope.context { b.append((c, 0..<Self.contextSize, 0..<scope.contextStoreEnd, .contextAccess)) }
        if scope.argStack { b.append((1, 0..<64, 0..<64, .stackAccess)) }
        if let (r, room) = scope.mapValue, room > 0 { b.append((r, 0..<room, 0..<room, .mapValue)) }
        return b
    }

    /// One load, store or atomic, in bounds, through a base register.
    mutating func access() {
        let all = bases
        let (base, read, write, shape) = all[random(all.count)]
        shapes.insert(shape)
        let size = BPF.sizes[random(4)]
        switch random(5) {
        case 0, 1: load(size, writable(), base, offset(in: read, size: size, align: 1), signExtend: random(3) == 0)
        case 2: storeImm(size, base, offset(in: write, size: size, align: 1), imm())
        case 3: store(size, base, offset(in: write, size: size, align: 1), readable())
        default: atomic(base, max(read.lowerBound, write.lowerBound)..<min(read.upperBound, write.upperBound), misaligned: false)  // atomics read too
        }
    }

    mutating func atomic(_ base: UInt8, _ range: Range<Int>, misaligned: Bool) {
        let size = random(2) == 0 ? 4 : 8
        let ops: [Int32] = [0x00, 0x01, 0x40, 0x41, 0x50, 0x51, 0xA0, 0xA1, BPF.XCHG, BPF.CMPXCHG]
        let op = ops[random(base == 0 ? ops.count - 1 : ops.count)]  // cmpxchg writes r0, which may be the base
        let src = op & BPF.FETCH != 0 && op != BPF.CMPXCHG ? writable(except: base) : readable(except: base)
        var at = offset(in: range, size: size, align: size)
        if misaligned { at += Int16(1 + random(size - 1)) }
        emit(BPF.STX | BPF.ATOMIC | (size == 8 ? BPF.DW : BPF.W), base, src, offset: at, imm: op)
    }

    /// `t = base + s` with s a constant or a masked context byte, an access through t, t scrubbed.
    mutating func pointerArithmetic() {
        let all = bases
        let (base, read, write, _) = all[random(all.count)]
        let isLoad = random(2) == 0
        let range = isLoad ? read : write
        guard range.count >= 24 else { return access() }
        shapes.insert(.pointerArithmetic)
        let t = writable(), s = writable(except: t)
        if let c = scope.context, random(2) == 0 { load(1, s, c, Int16(random(Self.contextSize))); aluK(BPF.AND, s, 15) }
        else { movK(s, Int32(random(16))) }
        movX(t, base)
        if random(2) == 0 { aluK(BPF.ADD, t, 16); aluX(BPF.SUB, t, s) } else { aluX(BPF.ADD, t, s) }
        // t is base + [0, 16]: the access stays inside the range whatever s is.
        let size = BPF.sizes[random(4)]
        let at = Int16(range.lowerBound + random(range.count - 16 - size + 1))
        if isLoad { load(size, writable(except: t), t, at) } else { store(size, t, at, readable(except: t)) }
        movK(t, imm())
    }

    /// A pointer spilled to the stack, filled into another register, used, and the slot overwritten.
    mutating func spill() {
        let all = bases
        let (base, read, _, shape) = all[random(all.count)]
        guard base != 10 else { return access() }
        shapes.formUnion([.stackAccess, shape])
        let slot = Int16(-8 * (9 + random(8))), t = writable()
        store(8, 10, slot, base)
        load(8, t, 10, slot)
        load(1, writable(except: t), t, offset(in: read, size: 1, align: 1))
        storeImm(8, 10, slot, imm())
        movK(t, imm())
    }

    // MARK: - Calls and maps

    /// `call 7` or callx (helper number in a register); r1-r5 rewritten after it, or read (hostile).
    mutating func helperCall() {
        shapes.insert(.helperCall)
        if scope.context == 1 || scope.argStack { movK(1, imm()) }
        if random(3) == 0 {
            shapes.insert(.callx)
            let r = UInt8(random(6))
            var number = BPFProgramGenerator.helperNumber
            if !allowed.isEmpty && random(3) == 0 { number = [9999, -1, 0][random(3)] }
            movK(r, number)
            emit(BPF.CALLX, r)
        } else {
            emit(BPF.JMP | BPF.CALL, imm: BPFProgramGenerator.helperNumber)
        }
        afterCall(pointerResult: false)
    }

    /// A call of a later function (or of a self-looping or recursive one) with r1 set as it wants.
    mutating func localCall() {
        let later = functions.indices.filter { f in
            guard f > scope.function else { return false }
            switch functions[f].kind {
            case .partner, .main: return false
            case .plain(.context): return scope.context == 6
            default: return true
            }
        }
        guard !later.isEmpty else { return alu() }
        call(later[random(later.count)])
    }

    mutating func call(_ f: Int) {
        called.insert(f)
        shapes.insert(.localCalls)
        switch functions[f].kind {
        case .plain(.stack): movX(1, 10); aluK(BPF.ADD, 1, -64)
        case .plain(.context): movX(1, 6)
        case .selfLoop: shapes.insert(.callToJumpTarget); movK(1, Int32(random(3)))
        case .recursive: movK(1, 0)
        default: if scope.context == 1 || scope.argStack { movK(1, imm()) }
        }
        callLocal(functions[f].entry)
        afterCall(pointerResult: false)
    }

    /// Lookup (null-checked, then accesses through r0), update or delete, on one of the maps.
    mutating func mapOperation() {
        let map = random(Self.mapDefinitions.count), (_, type, keySize, valueSize, entries) = Self.mapDefinitions[map]
        let slot = Int16(-8 * (1 + random(8)))
        let key = type == .array ? UInt64(random(entries + 1)) : Self.hashKeys[random(Self.hashKeys.count)]
        storeImm(keySize, 10, slot, Int32(truncatingIfNeeded: key))
        lddw(1, src: 1, UInt64(map))
        movX(2, 10)
        aluK(BPF.ADD, 2, Int32(slot))
        let helper = Int32(random(3) == 0 ? 1 + random(3) : 1)
        if helper == 2 {
            movX(3, 10)
            aluK(BPF.ADD, 3, -64)
            movK(4, allowed.isEmpty ? Int32(random(3)) : Int32(random(5)))
        }
        emit(BPF.JMP | BPF.CALL, imm: helper)
        afterCall(pointerResult: helper == 1)
        shapes.insert(helper == 1 ? .mapValue : .mapUpdate)
        guard helper == 1 else { return }
        let unchecked = allowed.contains(.uncheckedMap) && random(2) == 0
        let out = newLabel()
        if unchecked { shapes.insert(.uncheckedMap) } else { jump(BPF.JMP | BPF.JEQ, 0, imm: 0, to: out) }
        // Past the value only into the next array element, inside the slab (see main's map value).
        let room = unchecked && map == 0 && key + 1 < UInt64(entries) && random(2) == 0 ? valueSize + 8 * (1 + random(3)) : valueSize
        for _ in 0..<(1 + random(3)) {
            let size = BPF.sizes[random(4)]
            switch random(4) {
            case 0: load(size, writable(except: 0), 0, offset(in: 0..<room, size: size, align: 1))
            case 1: store(size, 0, offset(in: 0..<room, size: size, align: 1), readable(except: 0))
            case 2: storeImm(size, 0, offset(in: 0..<room, size: size, align: 1), imm())
            default: atomic(0, 0..<room, misaligned: false)
            }
        }
        place(out)
        movK(0, imm())
    }

    /// After a call r1-r5 are unreadable: rewrite them, or (hostile) read every register first.
    /// `pointerResult`: r0 holds a lookup's result, which stays out of the reads.
    mutating func afterCall(pointerResult: Bool) {
        if scope.context == 1 { scope.context = nil }
        if scope.argStack { scope.argStack = false }
        if !scope.writable.contains(1) { scope.writable.append(1); scope.readable.append(1) }
        let sinks = scope.writable.filter { $0 > 5 } + (pointerResult ? [] : [0])
        if allowed.contains(.clobberedRead) && !sinks.isEmpty && random(2) == 0 {
            shapes.insert(.clobberedRead)
            let sink = sinks[0]
            for r: UInt8 in 0...9 where r != sink && (scope.readable.contains(r) || (1...5).contains(r)) && !(pointerResult && r == 0) {
                aluX(BPF.XOR, sink, r)
            }
            if let c = scope.context { for r: UInt8 in 1...5 where random(2) == 0 { store(8, c, Int16(8 * random(7)), r) } }
        }
        for r: UInt8 in 1...5 { constant(r) }
    }

    // MARK: - Hostile items

    mutating func hostileItem(_ depth: Int) {
        let list = Shape.named.map(\.0).filter { allowed.contains($0) }
        let shape = list[random(list.count)]
        switch shape {
        case .infiniteLoop:
            shapes.insert(.infiniteLoop)
            switch random(3) {
            case 0: emit(BPF.JMP | BPF.JA, offset: -1)
            case 1: let r = readable(); emit(BPF.JMP | BPF.JEQ | BPF.X, r, r, offset: -1)
            default: emit(BPF.JMP32 | BPF.JA, imm: -1)
            }
        case .uninitializedStack:
            shapes.insert(.uninitializedStack)
            let d = writable(except: 0), size = BPF.sizes[random(4)]
            load(size, d, 10, Int16(-BPF.stackSize + random(BPF.stackSize - 64 - size + 1)))
            aluX(BPF.ADD, 0, d)
        case .contextOutOfBounds:
            guard let c = scope.context else { return escapeFrame() }
            shapes.insert(.contextOutOfBounds)
            let size = BPF.sizes[random(4)]
            // Slightly out: within the tester's guard bytes. Wildly out: terabytes away. (In between,
            // heap neighbours such as another run's map slabs would make the outcome layout-dependent.)
            if random(3) == 0 { return far(from: c) }
            let at = random(2) == 0 ? Int16(-1 - random(16)) : Int16(Self.contextSize - size + 1 + random(16))
            if random(2) == 0 { load(size, writable(), c, at) } else { storeImm(size, c, at, imm()) }
        case .crossRegion:
            crossRegion()
        case .escapeFrame:
            escapeFrame()
        case .misalignedAtomic:
            shapes.insert(.misalignedAtomic)
            let all = bases
            let (base, read, write, _) = all[random(all.count)]
            atomic(base, max(read.lowerBound, write.lowerBound)..<(min(read.upperBound, write.upperBound) - 8), misaligned: true)
        case .escapeEntry where functions.count > 1 && scope.function == 0:
            shapes.formUnion([.escapeEntry, .jumpToEntry])  // into another function: rejected by any verifier
            let skip = newLabel()
            jump(BPF.JMP | BPF.JNE, readable(), imm: imm(), to: skip)
            ja(functions[1 + random(functions.count - 1)].entry)
            place(skip)
        default:
            access()
        }
    }

    /// `t1 = b - a; t2 = a + t1`: a pointer of region a landing on region b, then an access.
    mutating func crossRegion() {
        let all = bases
        guard all.count > 1 else { return escapeFrame() }
        shapes.insert(.crossRegion)
        let from = all[random(all.count)], to = all.filter { $0.0 != from.0 }[random(all.count - 1)]
        let t1 = writable(), t2 = writable(except: t1)
        movX(t1, to.0)
        aluX(BPF.SUB, t1, from.0)
        movX(t2, from.0)
        aluX(BPF.ADD, t2, t1)
        let size = BPF.sizes[random(4)]
        if random(2) == 0 { load(size, writable(except: t2), t2, offset(in: to.1, size: size, align: 1)) }
        else { store(size, t2, offset(in: to.2, size: size, align: 1), pick(scope.readable.filter { $0 != t1 }, except: t2)) }  // t1 is address-dependent
        movK(t1, imm())
        movK(t2, imm())
    }

    /// An access just above r10 (past the stack's end in main, the caller's frame in a callee), just
    /// below the frame, or terabytes away; then stores through a moved copy of r10, as a
    /// return-address overwrite would. Offsets stay where no other run's memory can be.
    mutating func escapeFrame() {
        shapes.insert(.escapeFrame)
        let size = BPF.sizes[random(4)], inCallee = scope.function != 0
        switch random(5) {
        case 0: if random(2) == 0 { load(size, writable(), 10, Int16(random(16))) } else { store(size, 10, Int16(random(16)), readable()) }
        case 1: let at = Int16(-BPF.stackSize - 1 - random(64)); if random(2) == 0 { load(size, writable(), 10, at) } else { store(size, 10, at, readable()) }
        case 2: far(from: 10)
        default:
            let t = writable()
            movX(t, 10)
            aluK(BPF.ADD, t, inCallee ? Int32(8 * (1 + random(8))) : 8)
            for k in 0..<(inCallee ? 1 + random(4) : 1) { store(8, t, Int16(8 * k), readable(except: t)) }
            movK(t, imm())
        }
    }

    /// A load or store at `base` plus or minus 2^40 to 2^47 (moved by a scalar register).
    mutating func far(from base: UInt8) {
        let t = writable(), s = writable(except: t)
        let distance = UInt64(1) << UInt64(40 + random(8))
        lddw(s, src: 0, random(2) == 0 ? distance : 0 &- distance)
        movX(t, base)
        aluX(BPF.ADD, t, s)
        let size = BPF.sizes[random(4)]
        if random(2) == 0 { load(size, writable(except: t), t, Int16(random(64))) } else { store(size, t, Int16(random(64)), readable(except: t)) }
        movK(t, imm())
    }
}
