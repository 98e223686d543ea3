// CExecMemCxxHost: C++ host frames for the loader's observability tests. Loaded modules throw C++
// exceptions through these frames and into them; the functions are plain C to Swift.
#ifndef CEXECMEM_CXX_HOST_H
#define CEXECMEM_CXX_HOST_H

#ifdef __cplusplus
extern "C" {
#endif

/// Calls `fn` inside try/catch: its result, or the `int` it threw, or -1 for any other exception.
/// `*caught` is set to 1 when something was caught, 0 otherwise.
int cem_host_catch(int (*fn)(void), int *caught);

/// Calls `fn(value)` with a local whose destructor counts into `cem_host_destructors`, catching
/// nothing: an exception `fn` throws unwinds through this host frame to the caller.
int cem_host_call(int (*fn)(int), int value);

/// Destructors of `cem_host_call`'s locals run so far (normal returns and unwinding alike).
int cem_host_destructors(void);

/// Whether libgcc's unwinder has call-frame information for `pc` (_Unwind_Find_FDE).
int cem_host_has_fde(const void *pc);

#ifdef __cplusplus
}
#endif

#endif
