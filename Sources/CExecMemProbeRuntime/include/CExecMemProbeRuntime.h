// CExecMemProbeRuntime: the parts of probing that must run in signal context or on every hooked
// call, in C.
//
// Patching code that other threads may be running uses the sequence of Linux's text_poke_bp: an int3
// first, then the tail of the new instruction, then its first byte, with every core serialized after
// each step. A thread that reaches the int3 meanwhile traps; the SIGTRAP handler here finds the site
// in a table of pokes in progress and emulates the instruction (a call, a jump, or a skip over a
// nop), so it never runs a half-written instruction.
//
// Exit hooks keep the caller's real return address on a per-thread shadow stack.
#ifndef CEXECMEM_PROBE_RUNTIME_H
#define CEXECMEM_PROBE_RUNTIME_H

#include <stdint.h>

enum cem_emulation { CEM_EMULATE_SKIP = 0, CEM_EMULATE_CALL = 1, CEM_EMULATE_JUMP = 2 };

/// Installs the SIGTRAP handler (once; it chains to the previous one for traps that are not ours).
int cem_probe_install_trap_handler(void);

/// Registers a poke in progress at `address`: a trap there emulates `kind` (to `target`, or a skip
/// of `length` bytes). Returns 0, or -1 when too many pokes are in progress.
int cem_poke_begin(uint64_t address, int kind, uint64_t target, int length);

/// The poke at `address` is done.
void cem_poke_end(uint64_t address);

/// Traps emulated so far (for tests and statistics).
uint64_t cem_poke_traps(void);

/// Exit hooks: push the caller's return address (with the hook) on entry (0 when the shadow stack is
/// full: the exit then goes unreported); pop it on return, which also calls
/// `exit_handler(hook, function, return value)` when it is set, and returns the real return address.
int cem_shadow_push(uint64_t return_address, uint64_t hook, uint64_t function);
uint64_t cem_shadow_pop(uint64_t return_value);

/// The exit handler every exit hook reports to.
extern void (*cem_exit_handler)(uint64_t hook, uint64_t function, uint64_t return_value);

#endif
