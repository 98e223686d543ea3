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

/// Writes `count` bytes (zeros when `bytes` is NULL) at `offset` of the arena's initial image: what
/// threads created from now on start with. Returns 0, or -1 when the image cannot be found or written.
int cem_tls_arena_set_image(size_t offset, const void *bytes, size_t count);

/// __tls_get_addr for modules: `index` points at {module, offset}.
void *cem_tls_get_addr(uint64_t *index);

/// __cxa_thread_atexit for modules (what C++ registers a thread_local object's destructor with):
/// the runtime keeps each thread's list, run at the thread's exit (through the C library's
/// __cxa_thread_atexit_impl, once per thread) or, for the thread that unloads a module, at unload.
int cem_cxa_thread_atexit(void (*destructor)(void *), void *object, void *dso);

/// The address of cem_cxa_thread_atexit.
void *cem_cxa_thread_atexit_address(void);

/// At a module's unload: runs the calling thread's thread-local destructors registered on `dso`,
/// last registered first; other threads' are dropped (their code is going away; glibc's dlclose
/// would keep the object until those threads exit). Returns how many were dropped.
int cem_thread_atexit_unload(void *dso);

/// atexit for modules (glibc's is in libc_nonshared.a, linked into each object that calls it, and
/// not exported): `__cxa_atexit(handler, NULL, dso)` with the __dso_handle of the module whose text
/// holds `handler` (see cem_module_text_add), so that the module's unload runs it.
int cem_atexit(void (*handler)(void));

/// at_quick_exit for modules, likewise (`__cxa_at_quick_exit`). __cxa_finalize leaves quick-exit
/// handlers registered: quick_exit after the module's unload would run freed code, as after dlclose.
int cem_at_quick_exit(void (*handler)(void));

/// The addresses of cem_atexit and cem_at_quick_exit.
void *cem_atexit_address(void);
void *cem_at_quick_exit_address(void);

/// A module's text [start, end) and its __dso_handle, from its load to its unload (for cem_atexit).
int cem_module_text_add(uintptr_t start, uintptr_t end, void *dso);

/// Forgets every text range of the module with `dso`.
void cem_module_text_remove(void *dso);

/// dladdr(3): the shared object containing `address`; returns its base and path, or 0.
int cem_dladdr(const void *address, const char **path, void **base);

/// dlsym(RTLD_DEFAULT, name).
void *cem_dlsym(const char *name);

/// fflush(NULL): flush every stdio stream, as returning from main does.
void cem_flush_all(void);

#endif
