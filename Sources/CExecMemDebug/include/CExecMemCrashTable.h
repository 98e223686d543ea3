// CExecMemCrashTable: the code registry's names, readable from a signal handler.
//
// A crash handler runs on the faulting thread, which may hold any lock: the registry's, malloc's,
// the dynamic loader's. So the handler reads a table that needs none: fixed-size slots, each with
// its name bytes inline and guarded by its own sequence counter (a seqlock). The registry is the one
// writer (under its lock); readers never wait, never allocate, and retry a slot that changes under
// them. Slots live in chunks that are never freed, so a reader never touches freed memory; a freed
// slot is reused for the next registration.
#ifndef CEXECMEM_CRASH_TABLE_H
#define CEXECMEM_CRASH_TABLE_H

#include <stddef.h>
#include <stdint.h>

/// Bytes of a name kept in a slot (longer names are cut; C++ names can be longer).
enum { CEM_CRASH_NAME_BYTES = 128, CEM_CRASH_OWNER_BYTES = 48 };

/// Records `[start, end)` as `name` (owned by `owner`, or NULL). Returns the slot, or -1 when the
/// table is full (1,048,576 slots) or out of memory. Writer only: callers serialize (the registry's lock).
int32_t cem_crash_table_add(uintptr_t start, uintptr_t end, const char *name, const char *owner);

/// Empties a slot `cem_crash_table_add` returned; it may be reused at once. Writer only.
void cem_crash_table_remove(int32_t slot);

/// Live slots (for tests).
int32_t cem_crash_table_count(void);

/// The innermost recorded range holding `address`: copies its name and owner (NUL-terminated, cut
/// to the capacities) and returns the offset of `address` into it, or -1 when nothing covers it.
/// `owner` is empty when the code has none. Async-signal-safe: no locks, no allocation; any thread.
intptr_t cem_crash_table_lookup(uintptr_t address, char *name, size_t name_capacity, char *owner, size_t owner_capacity);

#endif
