// See CExecMemLoaderRuntime.h.
#define _GNU_SOURCE
#include "CExecMemLoaderRuntime.h"

#include <dlfcn.h>
#include <link.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

// In .tdata, not .tbss: its bytes are then part of the host's TLS initialization image, which the C
// library copies into every new thread's static TLS block; cem_tls_arena_set_image writes modules'
// initial values there.
static __thread char arena[CEM_TLS_ARENA_SIZE] __attribute__((tls_model("initial-exec"), aligned(64), section(".tdata")));

static inline char *thread_pointer(void) {
    char *tp;
    __asm__("mov %%fs:0, %0" : "=r"(tp));
    return tp;
}

int64_t cem_tls_arena_offset(void) { return (int64_t)(arena - thread_pointer()); }

void *cem_tls_arena(void) { return arena; }

// The arena's bytes in its object's TLS initialization image (PT_TLS p_vaddr: what new threads copy),
// and the read-only (RELRO) pages around them.
struct arena_image { char *image; uintptr_t relro_start, relro_end; int found; };

static int find_arena_image(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    struct arena_image *r = data;
    const ElfW(Phdr) *tls = 0, *relro = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        if (info->dlpi_phdr[i].p_type == PT_TLS) tls = &info->dlpi_phdr[i];
        if (info->dlpi_phdr[i].p_type == PT_GNU_RELRO) relro = &info->dlpi_phdr[i];
    }
    char *block = info->dlpi_tls_data;  // the calling thread's copy of this object's TLS block
    if (!tls || !block || arena < block || arena >= block + tls->p_memsz) return 0;
    size_t offset = (size_t)(arena - block);
    if (offset + CEM_TLS_ARENA_SIZE > tls->p_filesz) return 1;  // not in the image: not found
    r->image = (char *)(info->dlpi_addr + tls->p_vaddr + offset);
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), at = info->dlpi_addr + tls->p_vaddr + offset;
    if (relro) {
        // What the dynamic linker made read-only: whole pages from the segment's start.
        r->relro_start = (info->dlpi_addr + relro->p_vaddr) & ~(page - 1);
        r->relro_end = (info->dlpi_addr + relro->p_vaddr + relro->p_memsz) & ~(page - 1);
    }
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *p = &info->dlpi_phdr[i];
        uintptr_t lo = info->dlpi_addr + p->p_vaddr;
        // A linker that put the image in a segment without PF_W: all of it is read-only.
        if (p->p_type == PT_LOAD && !(p->p_flags & PF_W) && lo <= at && at < lo + p->p_memsz) {
            r->relro_start = lo & ~(page - 1);
            r->relro_end = (lo + p->p_memsz + page - 1) & ~(page - 1);
        }
    }
    r->found = 1;
    return 1;
}

int cem_tls_arena_set_image(size_t offset, const void *bytes, size_t count) {
    static struct arena_image where;
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    if (offset > CEM_TLS_ARENA_SIZE || count > CEM_TLS_ARENA_SIZE - offset) return -1;
    pthread_mutex_lock(&lock);
    if (!where.found) dl_iterate_phdr(find_arena_image, &where);
    if (!where.found) { pthread_mutex_unlock(&lock); return -1; }
    char *dst = where.image + offset;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)dst & ~(page - 1), hi = ((uintptr_t)dst + count + page - 1) & ~(page - 1);
    // Pages of the image inside RELRO are read-only: writable while written, read-only again after.
    uintptr_t rlo = lo > where.relro_start ? lo : where.relro_start, rhi = hi < where.relro_end ? hi : where.relro_end;
    int sealed = rlo < rhi;
    if (sealed && mprotect((void *)rlo, rhi - rlo, PROT_READ | PROT_WRITE) != 0) { pthread_mutex_unlock(&lock); return -1; }
    if (bytes) memcpy(dst, bytes, count); else memset(dst, 0, count);
    if (sealed) mprotect((void *)rlo, rhi - rlo, PROT_READ);
    pthread_mutex_unlock(&lock);
    return 0;
}

void *cem_tls_get_addr(uint64_t *index) {
    if (index[0] == CEM_TLS_ARENA_MODULE) return arena + index[1];
    static void *(*real)(uint64_t *);
    if (!real) real = (void *(*)(uint64_t *))dlsym(RTLD_DEFAULT, "__tls_get_addr");
    return real ? real(index) : 0;
}

// Thread-local destructors of modules: one list per thread, every thread's list reachable from the
// registry (under the lock) so that an unload can drop another thread's entries for the module.
struct tls_dtor { void (*func)(void *); void *obj; void *dso; struct tls_dtor *next; };
struct thread_dtors { struct tls_dtor *list; struct thread_dtors *prev, *next; int linked; };
static pthread_mutex_t dtor_lock = PTHREAD_MUTEX_INITIALIZER;
static struct thread_dtors *dtor_threads;
static __thread struct thread_dtors thread_dtors;

// Run by the C library's __call_tls_dtors at the thread's exit (exit() for the main thread).
static void run_thread_dtors(void *arg) {
    struct thread_dtors *t = arg;
    pthread_mutex_lock(&dtor_lock);
    while (t->list) {  // a destructor may register more: they run too
        struct tls_dtor *e = t->list;
        t->list = e->next;
        pthread_mutex_unlock(&dtor_lock);
        if (e->func) e->func(e->obj);
        free(e);
        pthread_mutex_lock(&dtor_lock);
    }
    if (t->prev) t->prev->next = t->next; else dtor_threads = t->next;
    if (t->next) t->next->prev = t->prev;
    t->prev = t->next = 0;
    t->linked = 0;
    pthread_mutex_unlock(&dtor_lock);
}

int cem_cxa_thread_atexit(void (*destructor)(void *), void *object, void *dso) {
    static int (*impl)(void (*)(void *), void *, void *);
    if (!impl) impl = (int (*)(void (*)(void *), void *, void *))dlsym(RTLD_DEFAULT, "__cxa_thread_atexit_impl");
    struct tls_dtor *e = malloc(sizeof *e);
    if (!e || !impl) { free(e); return -1; }
    struct thread_dtors *t = &thread_dtors;
    pthread_mutex_lock(&dtor_lock);
    int first = !t->linked;
    if (first) {
        t->linked = 1;
        t->prev = 0;
        t->next = dtor_threads;
        if (dtor_threads) dtor_threads->prev = t;
        dtor_threads = t;
    }
    e->func = destructor;
    e->obj = object;
    e->dso = dso;
    e->next = t->list;
    t->list = e;
    pthread_mutex_unlock(&dtor_lock);
    // The host's own object as the DSO: the C library keeps it (never unloaded) for the list.
    if (first && impl(run_thread_dtors, t, (void *)&cem_cxa_thread_atexit) != 0) {
        // Nothing would run the list or unlink the thread (its storage goes at its exit): undo.
        pthread_mutex_lock(&dtor_lock);
        t->list = e->next;
        if (t->prev) t->prev->next = t->next; else dtor_threads = t->next;
        if (t->next) t->next->prev = t->prev;
        t->prev = t->next = 0;
        t->linked = 0;
        pthread_mutex_unlock(&dtor_lock);
        free(e);
        return -1;
    }
    return 0;
}

void *cem_cxa_thread_atexit_address(void) { return (void *)&cem_cxa_thread_atexit; }

int cem_thread_atexit_unload(void *dso) {
    int dropped = 0;
    pthread_mutex_lock(&dtor_lock);
    for (struct thread_dtors *t = dtor_threads; t; t = t->next) {
        if (t == &thread_dtors) continue;
        for (struct tls_dtor *e = t->list; e; e = e->next)
            if (e->dso == dso && e->func) { e->func = 0; dropped++; }
    }
    struct tls_dtor **p = &thread_dtors.list;
    while (*p) {
        struct tls_dtor *e = *p;
        if (e->dso != dso) { p = &e->next; continue; }
        *p = e->next;
        pthread_mutex_unlock(&dtor_lock);
        if (e->func) e->func(e->obj);
        free(e);
        pthread_mutex_lock(&dtor_lock);
        p = &thread_dtors.list;  // the destructor may have changed the list: from the top again
    }
    pthread_mutex_unlock(&dtor_lock);
    return dropped;
}

// Modules' text and __dso_handle, for atexit: which module a handler belongs to.
struct module_text { uintptr_t start, end; void *dso; };
static pthread_mutex_t text_lock = PTHREAD_MUTEX_INITIALIZER;
static struct module_text *texts;
static size_t text_count, text_capacity;

int cem_module_text_add(uintptr_t start, uintptr_t end, void *dso) {
    pthread_mutex_lock(&text_lock);
    if (text_count == text_capacity) {
        size_t n = text_capacity ? text_capacity * 2 : 16;
        struct module_text *t = realloc(texts, n * sizeof *t);
        if (!t) { pthread_mutex_unlock(&text_lock); return -1; }
        texts = t;
        text_capacity = n;
    }
    texts[text_count++] = (struct module_text){start, end, dso};
    pthread_mutex_unlock(&text_lock);
    return 0;
}

void cem_module_text_remove(void *dso) {
    pthread_mutex_lock(&text_lock);
    size_t k = 0;
    for (size_t i = 0; i < text_count; i++) if (texts[i].dso != dso) texts[k++] = texts[i];
    text_count = k;
    pthread_mutex_unlock(&text_lock);
}

extern int __cxa_atexit(void (*)(void *), void *, void *);
extern int __cxa_at_quick_exit(void (*)(void), void *);

static void *dso_of(void (*handler)(void)) {
    void *dso = 0;  // a host function: the process's, run at exit
    pthread_mutex_lock(&text_lock);
    for (size_t i = 0; i < text_count; i++)
        if (texts[i].start <= (uintptr_t)handler && (uintptr_t)handler < texts[i].end) { dso = texts[i].dso; break; }
    pthread_mutex_unlock(&text_lock);
    return dso;
}

int cem_atexit(void (*handler)(void)) { return __cxa_atexit((void (*)(void *))handler, 0, dso_of(handler)); }

int cem_at_quick_exit(void (*handler)(void)) { return __cxa_at_quick_exit(handler, dso_of(handler)); }

void *cem_atexit_address(void) { return (void *)&cem_atexit; }

void *cem_at_quick_exit_address(void) { return (void *)&cem_at_quick_exit; }

int cem_dladdr(const void *address, const char **path, void **base) {
    Dl_info info;
    if (!dladdr(address, &info)) return 0;
    *path = info.dli_fname;
    *base = info.dli_fbase;
    return 1;
}

void *cem_dlsym(const char *name) { return dlsym(RTLD_DEFAULT, name); }

void cem_flush_all(void) { fflush(NULL); }
