// CExecMemDebug: what debuggers and the unwinder look for by C name.
//
// GDB finds JIT code through two symbols of fixed name and layout (the GDB JIT interface, "JIT
// Compilation Interface" in GDB's manual): a descriptor holding a list of in-memory symbol files, and a
// function GDB puts a breakpoint on and that is called after each change. libgcc's unwinder takes
// .eh_frame sections through __register_frame / __deregister_frame. Swift can name neither, so they
// live here; the code registry (ExecMem) is the only caller, under its lock.
#ifndef CEXECMEM_DEBUG_H
#define CEXECMEM_DEBUG_H

#include <stdint.h>
#include "CExecMemCrashTable.h"

/// One in-memory symbol file GDB reads (struct jit_code_entry).
struct cem_jit_code_entry {
    struct cem_jit_code_entry *next_entry;
    struct cem_jit_code_entry *prev_entry;
    const char *symfile_addr;
    uint64_t symfile_size;
};

/// Links `entry` at the head of the descriptor's list and tells an attached GDB (JIT_REGISTER_FN).
/// The caller keeps `entry` and its symbol file alive and unchanged until it unregisters it.
void cem_jit_register(struct cem_jit_code_entry *entry);

/// Unlinks `entry` and tells an attached GDB (JIT_UNREGISTER_FN); GDB forgets the symbol file.
void cem_jit_unregister(struct cem_jit_code_entry *entry);

/// How many entries the descriptor lists (for tests).
int cem_jit_entry_count(void);

/// The descriptor's first entry, what GDB reads first (for tests); NULL when the list is empty.
const struct cem_jit_code_entry *cem_jit_first_entry(void);

/// libgcc's __register_frame: `section` is a complete .eh_frame (CIEs and FDEs, then a zero word).
/// The bytes must stay alive and unchanged until cem_deregister_frame(section).
void cem_register_frame(const void *section);

/// libgcc's __deregister_frame for a section registered with cem_register_frame.
void cem_deregister_frame(const void *section);

/// Walks the calling thread's stack with _Unwind_Backtrace, filling at most `capacity` return
/// addresses (the first is the caller of this function). Returns how many it filled.
int cem_unwind_backtrace(uintptr_t *addresses, int capacity);

/// The calling thread's depth of CodeRegistry.batch (a batch defers only its own thread's flushes).
void cem_batch_enter(void);
void cem_batch_leave(void);
int cem_batch_depth(void);

#endif
