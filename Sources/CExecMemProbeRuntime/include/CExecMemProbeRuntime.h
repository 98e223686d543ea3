// CExecMemProbeRuntime: the parts of probing that run in signal context or on every hooked call.
//
// Patching code that other threads may be running follows Linux's text_poke_bp: an int3 first, then
// the tail of the new instruction, then its first byte, with every core serialized after each step.
// A thread that reaches an int3 meanwhile traps; the SIGTRAP handler finds the site in the batch of
// pokes in progress and emulates the instruction (a call, a jump, or a skip over a nop), so no thread
// ever runs a half-written instruction. A trap that arrives after its poke finished (the thread was
// in the kernel while the patch completed) finds the int3 gone and simply runs the new instruction.
//
// Instruction probes displace several instructions. Before their bytes change, every other thread
// is stopped briefly by a signal whose handler moves a thread that sits between displaced
// instructions to the same instruction in the out-of-line copy (the sweep).
//
// Exit hooks keep the caller's real return address on a per-thread shadow stack.
#ifndef CEXECMEM_PROBE_RUNTIME_H
#define CEXECMEM_PROBE_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

enum cem_emulation { CEM_EMULATE_SKIP = 0, CEM_EMULATE_CALL = 1, CEM_EMULATE_JUMP = 2 };

/// One site being patched: a trap at `address` emulates `kind` (to `target`, or a skip of `length`).
struct cem_poke {
    uint64_t address;
    uint64_t target;
    int32_t kind;
    int32_t length;
};

/// Installs the SIGTRAP handler (once; traps that are not ours go to the previous handler).
int cem_probe_install_trap_handler(void);

/// Publishes the batch of pokes in progress (sorted by address, alive until unpublished), or
/// unpublishes it with (NULL, 0), which returns once no trap handler still reads the old batch.
void cem_poke_publish(const struct cem_poke *sorted, size_t count);

/// Trap probes: a lasting int3 at `address` sends the thread to `slot` (Linux's plain kprobes; the
/// slot holds the one displaced instruction). Add before writing the int3; remove after the original
/// byte is back. Returns 0, or -1 when out of memory.
int cem_trap_probe_add(uint64_t address, uint64_t slot);
int cem_trap_probe_remove(uint64_t address);

/// Traps emulated so far, and traps that found their poke already done.
uint64_t cem_poke_traps(void);
uint64_t cem_poke_late_traps(void);

/// One move of the sweep: a thread stopped at `from` continues at `to`.
struct cem_move {
    uint64_t from;
    uint64_t to;
};

struct cem_sweep_result {
    uint64_t signalled;    // threads sent the signal
    uint64_t answered;     // threads whose handler ran (or that exited meanwhile)
    uint64_t moved;        // threads moved into an out-of-line copy
    uint64_t unreachable;  // threads that block the signal (libdispatch workers do)
};

/// Interrupts every other thread of the process once with a signal and applies `moves` to the ones
/// that stand at a `from` address, waiting until each has answered or exited. Threads that block
/// the signal cannot be reached and are counted. Returns 0, or -1 with errno set (ETIMEDOUT when a
/// thread did not answer within `timeout_ms`: the caller must not go on as if it had).
int cem_sweep_threads(const struct cem_move *moves, size_t count, int timeout_ms, struct cem_sweep_result *result);

/// Other threads that block the sweep signal right now (-1 when /proc/self/task cannot be read).
int cem_threads_blocking_sweep(void);

/// Exit hooks: push the caller's return address (with the hook) on entry (0 when the shadow stack is
/// full: the exit then goes unreported); pop it on return, which stores the real return address in
/// `*slot` (the exit trampoline's return-address slot, so the unwinder finds it), then calls
/// `cem_exit_handler(hook, function, return value)` when it is set, and returns the address.
int cem_shadow_push(uint64_t return_address, uint64_t hook, uint64_t function);
uint64_t cem_shadow_pop(uint64_t return_value, uint64_t *slot);

/// Sets the exit handler every exit hook reports to.
void cem_set_exit_handler(void (*handler)(uint64_t hook, uint64_t function, uint64_t return_value));

/// Addresses the trampolines call (so Swift can embed them).
uint64_t cem_shadow_push_address(void);
uint64_t cem_shadow_pop_address(void);

/// The registers an instruction probe's handler sees (and may change, except rsp and rip), in the
/// order the out-of-line slot saves them.
struct cem_probe_registers {
    uint64_t rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t rip;  // the probed instruction
    uint64_t rflags;
};

/// Bytes an XSAVE of every enabled state component needs (0: no XSAVE; probes then use FXSAVE).
uint32_t cem_xsave_size(void);

/// Current shadow-stack depth of the calling thread (for tests).
int cem_shadow_depth(void);

#endif
