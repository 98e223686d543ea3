// Small x86-64 functions for the demo and benchmarks: real code, several sizes, some calling the
// host with `call rel32` and some reading rodata with RIP-relative loads, so running them proves
// reach as well as placement. Each is `int32_t f(int32_t x)` (System V: x in edi, result in eax),
// padded in front with multi-byte NOPs to the size asked for.

import ExecMem

/// The host function generated code calls: `host(x) = 3x ^ 0x55`.
let demoHostFunction: @convention(c) (Int32) -> Int32 = { x in (x &* 3) ^ 0x55 }

var demoHostAddress: UInt { UInt(bitPattern: unsafeBitCast(demoHostFunction, to: UnsafeRawPointer.self)) }

public enum DemoFunction: Sendable {
    /// `x + k`: `lea eax, [rdi + k]`.
    case add(Int32)
    /// `x * a + b`: `imul eax, edi, a; add eax, b`.
    case mulAdd(Int32, Int32)
    /// `host(x) + k`, the host reached by `call rel32` (or `mov rax, imm64; call rax` when out of reach).
    case callHost(Int32)
    /// `x + table[0]`, the table in a rodata allocation read with `mov eax, [rip + disp32]`.
    case readTable(UInt, Int32)

    /// The result the function must return for `x`.
    public func expected(_ x: Int32) -> Int32 {
        switch self {
        case let .add(k): x &+ k
        case let .mulAdd(a, b): x &* a &+ b
        case let .callHost(k): demoHostFunction(x) &+ k
        case let .readTable(_, v): x &+ v
        }
    }

    /// The body's bytes for a function placed at `address` (rel32 fields depend on it).
    func body(at address: UInt, bodyOffset: Int) -> [UInt8] {
        var out: [UInt8] = []
        func imm(_ v: Int32) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        switch self {
        case let .add(k):
            out += [0x8D, 0x87]; imm(k)
        case let .mulAdd(a, b):
            out += [0x69, 0xC7]; imm(a); out.append(0x05); imm(b)
        case let .callHost(k):
            out += [0x48, 0x83, 0xEC, 0x08]  // sub rsp, 8 (keep the stack 16-byte aligned)
            let next = address + UInt(bodyOffset + out.count + 5)
            if let d = Rel32.displacement(from: next, to: demoHostAddress) {
                out.append(0xE8); imm(d)  // call rel32
            } else {
                out += [0x48, 0xB8]  // mov rax, imm64; call rax
                withUnsafeBytes(of: UInt64(demoHostAddress).littleEndian) { out += $0 }
                out += [0xFF, 0xD0]
            }
            out += [0x48, 0x83, 0xC4, 0x08, 0x05]; imm(k)  // add rsp, 8; add eax, k
        case let .readTable(table, _):
            let next = address + UInt(bodyOffset + 6)
            let d = Rel32.displacement(from: next, to: table)!
            out += [0x8B, 0x05]; imm(d)  // mov eax, [rip + disp32]
            out += [0x01, 0xF8]  // add eax, edi
        }
        out.append(0xC3)
        return out
    }

    /// Longest body any case emits (callHost's indirect form), so sizes at or above it always fit.
    static let maxBodySize = 4 + 12 + 4 + 5 + 1

    /// The whole function, `size` bytes, for `address`.
    public func code(size: Int, at address: UInt) -> [UInt8] {
        let bodySize = body(at: address, bodyOffset: 0).count
        precondition(size >= bodySize, "function of \(size) bytes cannot hold a \(bodySize)-byte body")
        let pad = size - bodySize
        return nopPadding(pad) + body(at: address, bodyOffset: pad)
    }
}

/// `count` bytes of the recommended multi-byte NOPs (at most 9 bytes each).
func nopPadding(_ count: Int) -> [UInt8] {
    let nops: [[UInt8]] = [
        [], [0x90], [0x66, 0x90], [0x0F, 0x1F, 0x00], [0x0F, 0x1F, 0x40, 0x00],
        [0x0F, 0x1F, 0x44, 0x00, 0x00], [0x66, 0x0F, 0x1F, 0x44, 0x00, 0x00],
        [0x0F, 0x1F, 0x80, 0x00, 0x00, 0x00, 0x00], [0x0F, 0x1F, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
        [0x66, 0x0F, 0x1F, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
    ]
    var out: [UInt8] = []
    out.reserveCapacity(count)
    var left = count
    while left > 0 {
        let n = min(left, 9)
        out += nops[n]
        left -= n
    }
    return out
}

/// Calls the `int32_t f(int32_t)` at `address`.
@inline(__always)
func callFunction(_ address: UInt, _ x: Int32) -> Int32 {
    typealias F = @convention(c) (Int32) -> Int32
    return unsafeBitCast(UnsafeRawPointer(bitPattern: address)!, to: F.self)(x)
}
