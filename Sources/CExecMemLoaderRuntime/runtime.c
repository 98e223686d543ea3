// See CExecMemLoaderRuntime.h.
#define _GNU_SOURCE
#include "CExecMemLoaderRuntime.h"

#include <dlfcn.h>
#include <stdio.h>

static __thread char arena[CEM_TLS_ARENA_SIZE] __attribute__((tls_model("initial-exec"), aligned(64)));

static inline char *thread_pointer(void) {
    char *tp;
    __asm__("mov %%fs:0, %0" : "=r"(tp));
    return tp;
}

int64_t cem_tls_arena_offset(void) { return (int64_t)(arena - thread_pointer()); }

void *cem_tls_arena(void) { return arena; }

void *cem_tls_get_addr(uint64_t *index) {
    if (index[0] == CEM_TLS_ARENA_MODULE) return arena + index[1];
    static void *(*real)(uint64_t *);
    if (!real) real = (void *(*)(uint64_t *))dlsym(RTLD_DEFAULT, "__tls_get_addr");
    return real ? real(index) : 0;
}

int cem_dladdr(const void *address, const char **path, void **base) {
    Dl_info info;
    if (!dladdr(address, &info)) return 0;
    *path = info.dli_fname;
    *base = info.dli_fbase;
    return 1;
}

void *cem_dlsym(const char *name) { return dlsym(RTLD_DEFAULT, name); }

void cem_flush_all(void) { fflush(NULL); }
