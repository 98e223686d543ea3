// The machine code of hooks: one shared body per hook set, one 64-byte stub per hooked function,
// and the exit trampoline every hooked return goes through.
//
// A hooked entry is `call stub`, so at the stub the stack holds the return into the function and
// above it the caller's return address. The stub points r11 (scratch at a function's entry in the
// SysV ABI) at its descriptor and jumps to the body, which saves the argument registers (rdi, rsi,
// rdx, rcx, r8, r9, rax for varargs) and xmm0-7, calls the handler with (context, function,
// arguments), optionally swaps the caller's return address for the exit trampoline, restores
// everything and returns into the function.
//
//   stub (one chunk):  lea r11, [rip+desc] ; jmp body ; ... ; desc: handler, context, function, exit
//   body frame:        [rbp+16] caller's return, [rbp+8] return into the function, [rbp] saved rbp,
//                      then rax, r9, r8, rcx, rdx, rsi, rdi (the arguments array), r11, and
//                      xmm0-7 below rsp aligned to 16.
//
// Each piece has call-frame information, so a backtrace from a handler walks body -> the hooked
// function (at its entry, whose own CFI applies) -> its caller -> the host's frames; and from an
// exit handler, exit trampoline -> the caller. In the code registry: `execmem_hook_<function>` (each
// stub), `execmem_hook_body`, `execmem_hook_exit`, `execmem_patch_<function>` (far-jump patch stubs).

import CExecMemProbeRuntime
import ExecMem

/// Little x86-64 emitter: bytes and the few encodings the trampolines use.
struct X86Code {
    var bytes: [UInt8] = []

    mutating func emit(_ b: UInt8...) { bytes += b }
    mutating func imm32(_ v: Int32) { bytes.append32(v) }
    mutating func imm64(_ v: UInt64) { bytes.append64(v) }

    /// movabs r64, imm64 for rax(0)..rdi(7).
    mutating func movabs(_ reg: UInt8, _ v: UInt64) { emit(0x48, 0xB8 + reg); imm64(v) }
    /// movdqu [rsp+disp8], xmmN (store) or movdqu xmmN, [rsp+disp8] (load), N < 8.
    mutating func movdqu(store: Bool, xmm n: UInt8, rspPlus disp: UInt8) { emit(0xF3, 0x0F, store ? 0x7F : 0x6F, 0x44 | n << 3, 0x24, disp) }
    /// mov [rsp+disp32], r64 (store) or mov r64, [rsp+disp32] (load); r64 numbered 0..15.
    mutating func movRSP(store: Bool, _ reg: UInt8, _ disp: Int32) {
        emit(0x48 | (reg >= 8 ? 0x04 : 0), store ? 0x89 : 0x8B, 0x84 | (reg & 7) << 3, 0x24)
        imm32(disp)
    }
    /// jmp to an absolute address: rel32 when `from` reaches it, else jmp [rip+0] with the address.
    mutating func jump(from address: UInt, to target: UInt) {
        if let d = Rel32.displacement(from: address + UInt(bytes.count) + 5, to: target) {
            emit(0xE9); imm32(d)
        } else {
            emit(0xFF, 0x25); imm32(0); imm64(UInt64(target))
        }
    }
    /// int3 up to a multiple of `n` bytes.
    mutating func pad(to n: Int) { while bytes.count % n != 0 { emit(0xCC) } }
}

enum Trampolines {
    /// Descriptor offset in a stub chunk, and the chunk's size.
    static let descriptorOffset = 32
    static let stubSize = 64

    /// The shared body and its frame; `exitTrampoline` is where hooked returns go when an exit hook
    /// is set. The stack is aligned here: gcc calls functions of the same file with a misaligned
    /// stack when it can prove they do not care, and a handler does care.
    ///
    /// Frame: entered by the stub's jump with the return into the function on top, so CFA = rsp + 8
    /// as at any function's entry; after `push rbp; mov rbp, rsp`, CFA = rbp + 16 until `pop rbp`.
    /// The argument registers are described where they were pushed (gdb shows the hooked call's
    /// arguments, as the handler may have changed them).
    static func body(exitTrampoline: UInt) -> (bytes: [UInt8], frame: CodeFrame) {
        var c = X86Code()
        var cfi = CFIProgram()
        c.emit(0x55)  // push rbp
        cfi.advance(to: c.bytes.count); cfi.cfaOffset(16); cfi.saved(.rbp, at: 16)
        c.emit(0x48, 0x89, 0xE5)  // mov rbp, rsp
        cfi.advance(to: c.bytes.count); cfi.cfaRegister(.rbp)
        // push rax, r9, r8, rcx, rdx, rsi, rdi: [rbp-56]
        let arguments: [([UInt8], CFIProgram.Register)] = [([0x50], .rax), ([0x41, 0x51], .r9), ([0x41, 0x50], .r8), ([0x51], .rcx),
                                                           ([0x52], .rdx), ([0x56], .rsi), ([0x57], .rdi)]
        for (k, (push, r)) in arguments.enumerated() {
            c.bytes += push
            cfi.advance(to: c.bytes.count); cfi.saved(r, at: 24 + 8 * k)
        }
        c.emit(0x41, 0x53)  // push r11: [rbp-64]
        c.emit(0x48, 0x81, 0xEC); c.imm32(128)  // sub rsp, 128
        c.emit(0x48, 0x83, 0xE4, 0xF0)  // and rsp, -16
        for n: UInt8 in 0..<8 { c.movdqu(store: true, xmm: n, rspPlus: n * 16) }
        c.emit(0x49, 0x8B, 0x7B, 0x08)  // mov rdi, [r11+8]   context
        c.emit(0x49, 0x8B, 0x73, 0x10)  // mov rsi, [r11+16]  function
        c.emit(0x48, 0x8D, 0x55, 0xC8)  // lea rdx, [rbp-56]  arguments
        c.emit(0x41, 0xFF, 0x13)  // call [r11]
        c.emit(0x4C, 0x8B, 0x5D, 0xC0)  // mov r11, [rbp-64]
        c.emit(0x49, 0x8B, 0x73, 0x18)  // mov rsi, [r11+24]  exit context
        c.emit(0x48, 0x85, 0xF6)  // test rsi, rsi
        let skip = c.bytes.count
        c.emit(0x74, 0)  // jz done
        c.emit(0x48, 0x8B, 0x7D, 0x10)  // mov rdi, [rbp+16]  caller's return address
        c.emit(0x49, 0x8B, 0x53, 0x10)  // mov rdx, [r11+16]  function
        c.movabs(0, cem_shadow_push_address())
        c.emit(0xFF, 0xD0)  // call rax
        c.emit(0x85, 0xC0)  // test eax, eax
        let skip2 = c.bytes.count
        c.emit(0x74, 0)  // jz done
        c.movabs(0, UInt64(exitTrampoline))
        c.emit(0x48, 0x89, 0x45, 0x10)  // mov [rbp+16], rax
        for s in [skip, skip2] { c.bytes[s + 1] = UInt8(c.bytes.count - s - 2) }
        for n: UInt8 in 0..<8 { c.movdqu(store: false, xmm: n, rspPlus: n * 16) }
        c.emit(0x48, 0x8D, 0x65, 0xC8)  // lea rsp, [rbp-56]
        c.emit(0x5F, 0x5E, 0x5A, 0x59, 0x41, 0x58, 0x41, 0x59, 0x58)  // pop rdi, rsi, rdx, rcx, r8, r9, rax
        c.emit(0x5D)  // pop rbp
        cfi.advance(to: c.bytes.count); cfi.defineCFA(.rsp, offset: 8); cfi.restored(.rbp)
        c.emit(0xC3)  // ret
        let length = c.bytes.count
        c.pad(to: 64)
        return (c.bytes, CodeFrame(offset: 0, length: length, instructions: cfi.bytes))
    }

    /// Where every hooked function with an exit hook returns (at `entryOffset`): report rax, return
    /// to the real caller. The function's return popped the only copy of the caller's address on
    /// the stack, so the trampoline pushes a slot for it, which `cem_shadow_pop` fills before it
    /// calls the exit handler: from then on CFA = the rsp it was entered with and the return address
    /// is at CFA - 8, as in any function (until then the slot is 0, and a backtrace ends there).
    /// The byte before the entry is where return addresses pointing at the entry look up (the
    /// hooked function's frame while its return address is swapped): the walk ends there too, as
    /// the real address is only on the shadow stack.
    static func exitTrampoline() -> (bytes: [UInt8], frame: CodeFrame) {
        var c = X86Code()
        var cfi = CFIProgram()
        cfi.defineCFA(.rsp, offset: 0); cfi.undefined(.returnAddress)
        c.emit(0xCC)  // never runs
        c.emit(0x6A, 0x00)  // push 0: the return-address slot
        cfi.advance(to: c.bytes.count); cfi.cfaOffset(8); cfi.saved(.returnAddress, at: 8)
        c.emit(0x55)  // push rbp
        cfi.advance(to: c.bytes.count); cfi.cfaOffset(16); cfi.saved(.rbp, at: 16)
        c.emit(0x48, 0x89, 0xE5)  // mov rbp, rsp
        cfi.advance(to: c.bytes.count); cfi.cfaRegister(.rbp)
        c.emit(0x50, 0x52)  // push rax, rdx
        c.emit(0x48, 0x83, 0xEC, 0x20)  // sub rsp, 32
        c.emit(0x48, 0x83, 0xE4, 0xF0)  // and rsp, -16
        c.movdqu(store: true, xmm: 0, rspPlus: 0)
        c.movdqu(store: true, xmm: 1, rspPlus: 16)
        c.emit(0x48, 0x89, 0xC7)  // mov rdi, rax
        c.emit(0x48, 0x8D, 0x75, 0x08)  // lea rsi, [rbp+8]: the slot
        c.movabs(0, cem_shadow_pop_address())
        c.emit(0xFF, 0xD0)  // call rax
        c.movdqu(store: false, xmm: 0, rspPlus: 0)
        c.movdqu(store: false, xmm: 1, rspPlus: 16)
        c.emit(0x48, 0x8D, 0x65, 0xF0)  // lea rsp, [rbp-16]
        c.emit(0x5A, 0x58, 0x5D)  // pop rdx, rax, rbp
        cfi.advance(to: c.bytes.count); cfi.defineCFA(.rsp, offset: 8); cfi.restored(.rbp)
        c.emit(0xC3)  // ret: to the real caller
        let length = c.bytes.count
        c.pad(to: 64)
        return (c.bytes, CodeFrame(offset: 0, length: length, instructions: cfi.bytes))
    }

    /// Where hooked returns enter the exit trampoline, past the byte return addresses look up.
    static let exitEntryOffset = 1

    /// The frame of a hook stub and of a far-jump patch stub: both are entered with the function's
    /// own entry state (called from its first instruction, or jumped to as it), CFA = rsp + 8 with
    /// the return address at CFA - 8, which the CIE already says.
    static func entryFrame(length: Int) -> CodeFrame { CodeFrame(offset: 0, length: length, instructions: []) }

    /// A hook's stub at `address`: r11 = its descriptor, jump to the body; the descriptor follows.
    static func stub(at address: UInt, body: UInt, handler: UInt, context: UInt, function: UInt, exitContext: UInt) -> [UInt8] {
        var c = X86Code()
        c.emit(0x4C, 0x8D, 0x1D); c.imm32(Int32(descriptorOffset - 7))  // lea r11, [rip+desc]
        c.jump(from: address, to: body)
        while c.bytes.count < descriptorOffset { c.emit(0xCC) }
        for v in [handler, context, function, exitContext] { c.imm64(UInt64(v)) }
        return c.bytes
    }

    /// A jump through memory to anywhere, for redirects whose target is out of rel32 reach.
    static func farJump(to target: UInt) -> [UInt8] {
        var c = X86Code()
        c.emit(0xFF, 0x25); c.imm32(0); c.imm64(UInt64(target))
        return c.bytes
    }
}

/// Code that may still be running (stubs and slots of removed hooks and probes) and the handler
/// boxes it points to, kept until the owner's `reclaim()`.
struct Retired<Box: AnyObject> {
    private var allocations: [Allocation] = []
    private var boxes: [Unmanaged<Box>] = []
    private var names: [CodeHandle] = []

    /// Retires `a` (named by `name` in the code registry until it is freed).
    mutating func add(_ a: Allocation, _ box: Unmanaged<Box>? = nil, name: CodeHandle? = nil) {
        allocations.append(a)
        if let box { boxes.append(box) }
        if let name { names.append(name) }
    }

    /// Empties the list; the caller frees what it returns once no thread can be inside.
    mutating func take() -> Retired<Box> {
        defer { self = Retired() }
        return self
    }

    /// Frees the code and releases the boxes; returns how many allocations were freed.
    func free(in allocator: ExecMemAllocator) -> Int {
        CodeRegistry.shared.batch { for n in names { CodeRegistry.shared.unregister(n) } }
        for a in allocations { try? allocator.free(a) }
        for b in boxes { b.release() }
        return allocations.count
    }
}
