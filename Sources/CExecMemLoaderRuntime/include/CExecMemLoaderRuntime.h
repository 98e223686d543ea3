// CExecMemLoaderRuntime: what the module loader needs from C.
//
// Thread-local storage for loaded modules: an arena in the host's static TLS block (initial-exec, so
// it sits at the same offset from the thread pointer in every thread), from which modules' __thread
// variables are given space; local-exec and initial-exec accesses then resolve to constant offsets.
// General- and local-dynamic accesses call `cem_tls_get_addr`, which answers for arena entries and
// forwards everything else to the C library's __tls_get_addr.
#ifndef CEXECMEM_LOADER_RUNTIME_H
#define CEXECMEM_LOADER_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

/// Bytes of thread-local storage modules may use in all.
#define CEM_TLS_ARENA_SIZE 32768

/// The `module` value of a tls_index that names the arena.
#define CEM_TLS_ARENA_MODULE 0x45584d454d544c53ULL  /* "EXMEMTLS" */

/// The arena's offset from the thread pointer (negative on x86-64; the same in every thread).
int64_t cem_tls_arena_offset(void);

/// The calling thread's copy of the arena.
void *cem_tls_arena(void);

/// __tls_get_addr for modules: `index` points at {module, offset}.
void *cem_tls_get_addr(uint64_t *index);

/// dladdr(3): the shared object containing `address`; returns its base and path, or 0.
int cem_dladdr(const void *address, const char **path, void **base);

/// dlsym(RTLD_DEFAULT, name).
void *cem_dlsym(const char *name);

/// fflush(NULL): flush every stdio stream, as returning from main does.
void cem_flush_all(void);

#endif
