// See CExecMemProbeRuntime.h.
#define _GNU_SOURCE
#include "CExecMemProbeRuntime.h"

#include <cpuid.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

// Pokes in progress: one batch at a time (patching is serialized by the caller).
static const struct cem_poke *_Atomic batch;
static _Atomic size_t batch_count;
static _Atomic int readers;  // trap handlers reading the batch
static struct sigaction previous_trap;
static _Atomic int installed;
static _Atomic uint64_t traps, late_traps;

static const struct cem_poke *find(const struct cem_poke *b, size_t n, uint64_t address) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (b[mid].address == address) return &b[mid];
        if (b[mid].address < address) lo = mid + 1; else hi = mid;
    }
    return NULL;
}

static void emulate(ucontext_t *uc, uint64_t rip, const struct cem_poke *p) {
    switch (p->kind) {
    case CEM_EMULATE_CALL: {
        uint64_t sp = (uint64_t)uc->uc_mcontext.gregs[REG_RSP] - 8;
        *(uint64_t *)sp = rip + 5;
        uc->uc_mcontext.gregs[REG_RSP] = (greg_t)sp;
        uc->uc_mcontext.gregs[REG_RIP] = (greg_t)p->target;
        break;
    }
    case CEM_EMULATE_JUMP:
        uc->uc_mcontext.gregs[REG_RIP] = (greg_t)p->target;
        break;
    default:
        uc->uc_mcontext.gregs[REG_RIP] = (greg_t)(rip + (uint64_t)p->length);
        break;
    }
}

// Trap probes: int3 sites that stay, each sending the thread to its out-of-line slot. Writers
// copy the sorted table, publish the copy, wait until no handler reads the old one, free it.
struct table {
    size_t count;
    struct cem_poke entries[];
};
static struct table *_Atomic resident;
static pthread_mutex_t resident_lock = PTHREAD_MUTEX_INITIALIZER;

static int replace_resident(uint64_t address, uint64_t target, int add) {
    pthread_mutex_lock(&resident_lock);
    struct table *old = atomic_load(&resident);
    size_t n = old ? old->count : 0;
    struct table *t = malloc(sizeof *t + (n + 1) * sizeof(struct cem_poke));
    if (!t) { pthread_mutex_unlock(&resident_lock); return -1; }
    size_t k = 0;
    int placed = 0;
    for (size_t i = 0; i < n; i++) {
        const struct cem_poke *e = &old->entries[i];
        if (e->address == address) continue;  // replaced or removed
        if (add && !placed && address < e->address) {
            t->entries[k++] = (struct cem_poke){address, target, CEM_EMULATE_JUMP, 1};
            placed = 1;
        }
        t->entries[k++] = *e;
    }
    if (add && !placed) t->entries[k++] = (struct cem_poke){address, target, CEM_EMULATE_JUMP, 1};
    t->count = k;
    atomic_store(&resident, t);
    while (atomic_load(&readers) != 0) sched_yield();
    free(old);
    pthread_mutex_unlock(&resident_lock);
    return 0;
}

int cem_trap_probe_add(uint64_t address, uint64_t slot) { return replace_resident(address, slot, 1); }
int cem_trap_probe_remove(uint64_t address) { return replace_resident(address, 0, 0); }

static void on_trap(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    uint64_t rip = (uint64_t)uc->uc_mcontext.gregs[REG_RIP] - 1;  // int3 has executed
    atomic_fetch_add(&readers, 1);
    const struct cem_poke *b = atomic_load(&batch);
    const struct cem_poke *p = b ? find(b, atomic_load(&batch_count), rip) : NULL;
    if (!p) {
        struct table *t = atomic_load(&resident);
        p = t ? find(t->entries, t->count, rip) : NULL;
    }
    if (p) {
        emulate(uc, rip, p);
        atomic_fetch_add(&readers, -1);
        atomic_fetch_add(&traps, 1);
        return;
    }
    atomic_fetch_add(&readers, -1);
    // An int3 that is gone was a poke that finished while this thread was on its way here: run what
    // is there now. (si_code SI_KERNEL with the trap's address is what int3 gives in user space.)
    if (info->si_code == SI_KERNEL && *(volatile uint8_t *)rip != 0xCC) {
        uc->uc_mcontext.gregs[REG_RIP] = (greg_t)rip;
        atomic_fetch_add(&late_traps, 1);
        return;
    }
    // Not one of ours: hand it to whoever had SIGTRAP before, or die of it as we would have.
    if (previous_trap.sa_flags & SA_SIGINFO) {
        if (previous_trap.sa_sigaction) { previous_trap.sa_sigaction(sig, info, context); return; }
    } else if (previous_trap.sa_handler != SIG_DFL && previous_trap.sa_handler != SIG_IGN) {
        previous_trap.sa_handler(sig);
        return;
    }
    signal(SIGTRAP, SIG_DFL);
    raise(SIGTRAP);
}

int cem_probe_install_trap_handler(void) {
    int expected = 0;
    if (!atomic_compare_exchange_strong(&installed, &expected, 1)) return 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_trap;
    sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGTRAP, &sa, &previous_trap);
}

void cem_poke_publish(const struct cem_poke *sorted, size_t count) {
    if (sorted) {
        atomic_store(&batch_count, count);
        atomic_store(&batch, sorted);
        return;
    }
    atomic_store(&batch, NULL);
    while (atomic_load(&readers) != 0) sched_yield();
}

uint64_t cem_poke_traps(void) { return atomic_load(&traps); }
uint64_t cem_poke_late_traps(void) { return atomic_load(&late_traps); }

// The sweep. Each sweep has a generation, sent with the signal (sigqueue's value): a signal left
// over from an earlier sweep, still queued for a thread that was slow to run, neither moves the
// thread with the current moves nor answers for the current sweep. Each thread's answer is recorded
// against its own id, so the sweep knows exactly which threads have answered.

#define SWEEP_SIGNAL (SIGRTMAX - 2)
#define SWEEP_MAX_THREADS 4096
static const struct cem_move *_Atomic sweep_moves;
static _Atomic size_t sweep_count;
static _Atomic uint64_t sweep_generation, sweep_moved;
static _Atomic int sweep_installed;
static pid_t sweep_tids[SWEEP_MAX_THREADS];
static _Atomic int sweep_answered[SWEEP_MAX_THREADS];
static _Atomic size_t sweep_threads;

static void on_sweep(int sig, siginfo_t *info, void *context) {
    (void)sig;
    if (info->si_code != SI_QUEUE || (uint64_t)(uintptr_t)info->si_value.sival_ptr != atomic_load(&sweep_generation)) return;
    ucontext_t *uc = context;
    const struct cem_move *m = atomic_load(&sweep_moves);
    size_t n = atomic_load(&sweep_count);
    uint64_t rip = (uint64_t)uc->uc_mcontext.gregs[REG_RIP];
    for (size_t i = 0; m && i < n; i++) {
        if (m[i].from == rip) {
            uc->uc_mcontext.gregs[REG_RIP] = (greg_t)m[i].to;
            atomic_fetch_add(&sweep_moved, 1);
            break;
        }
    }
    pid_t self = (pid_t)syscall(SYS_gettid);
    size_t threads = atomic_load(&sweep_threads);
    for (size_t i = 0; i < threads; i++) {
        if (sweep_tids[i] == self) { atomic_store(&sweep_answered[i], 1); break; }
    }
}

/// Whether thread `tid` blocks the sweep signal (libdispatch's worker threads block every
/// asynchronous signal), from SigBlk in its status file.
static int blocks_sweep(pid_t tid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/task/%d/status", (int)tid);
    FILE *f = fopen(path, "re");
    if (!f) return 0;
    int blocked = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "SigBlk:", 7) != 0) continue;
        unsigned long long mask = strtoull(line + 7, NULL, 16);
        blocked = (mask >> (SWEEP_SIGNAL - 1)) & 1;
        break;
    }
    fclose(f);
    return blocked;
}

/// The process's other threads: those that can take the sweep signal go into `reachable` (when
/// given, at most `max`), those that block it are counted in *blocking. Returns -1 with errno set
/// when /proc/self/task cannot be read or there are more than `max` threads.
static int other_threads(pid_t *reachable, size_t max, size_t *count, uint64_t *blocking) {
    pid_t self = (pid_t)syscall(SYS_gettid);
    DIR *dir = opendir("/proc/self/task");
    if (!dir) return -1;
    *count = 0;
    *blocking = 0;
    struct dirent *e;
    while ((e = readdir(dir))) {
        if (e->d_name[0] == '.') continue;
        pid_t tid = (pid_t)atoi(e->d_name);
        if (tid == self) continue;
        if (blocks_sweep(tid)) { (*blocking)++; continue; }
        if (!reachable) continue;
        if (*count == max) { closedir(dir); errno = E2BIG; return -1; }
        reachable[(*count)++] = tid;
    }
    closedir(dir);
    return 0;
}

int cem_threads_blocking_sweep(void) {
    size_t count;
    uint64_t blocking;
    return other_threads(NULL, 0, &count, &blocking) == 0 ? (int)blocking : -1;
}

int cem_sweep_threads(const struct cem_move *moves, size_t count, int timeout_ms, struct cem_sweep_result *result) {
    int expected = 0;
    if (atomic_compare_exchange_strong(&sweep_installed, &expected, 1)) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_sweep;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SWEEP_SIGNAL, &sa, NULL) != 0) { atomic_store(&sweep_installed, 0); return -1; }
    }
    memset(result, 0, sizeof *result);
    pid_t pid = getpid();
    // The threads to ask, before any signal goes out (the handler reads the list).
    atomic_store(&sweep_threads, 0);
    uint64_t generation = atomic_fetch_add(&sweep_generation, 1) + 1;
    size_t n;
    if (other_threads(sweep_tids, SWEEP_MAX_THREADS, &n, &result->unreachable) != 0) return -1;
    for (size_t i = 0; i < n; i++) atomic_store(&sweep_answered[i], 0);
    atomic_store(&sweep_threads, n);
    atomic_store(&sweep_moved, 0);
    atomic_store(&sweep_count, count);
    atomic_store(&sweep_moves, moves);
    siginfo_t info;
    memset(&info, 0, sizeof info);
    info.si_signo = SWEEP_SIGNAL;
    info.si_code = SI_QUEUE;
    info.si_pid = pid;
    info.si_uid = getuid();
    info.si_value.sival_ptr = (void *)(uintptr_t)generation;
    for (size_t i = 0; i < n; i++) {
        if (syscall(SYS_rt_tgsigqueueinfo, pid, sweep_tids[i], SWEEP_SIGNAL, &info) == 0) result->signalled++;
        else atomic_store(&sweep_answered[i], 1);  // ESRCH: it has exited
    }
    // Wait for every thread to answer or exit; one that does neither in time fails the sweep.
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    int status = 0;
    for (;;) {
        size_t waiting = 0;
        for (size_t i = 0; i < n; i++) {
            if (atomic_load(&sweep_answered[i])) continue;
            if (syscall(SYS_tgkill, pid, sweep_tids[i], 0) != 0) { atomic_store(&sweep_answered[i], 1); continue; }
            waiting++;
        }
        if (waiting == 0) break;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long ms = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (ms > timeout_ms) { errno = ETIMEDOUT; status = -1; break; }
        sched_yield();
    }
    atomic_store(&sweep_moves, NULL);
    atomic_fetch_add(&sweep_generation, 1);  // answers from now on are late, and ignored
    for (size_t i = 0; i < n; i++) result->answered += (uint64_t)atomic_load(&sweep_answered[i]);
    result->moved = atomic_load(&sweep_moved);
    return status;
}

// Exit hooks.

#define SHADOW_DEPTH 4096
struct shadow { uint64_t return_address, hook, function; };
static __thread struct shadow stack[SHADOW_DEPTH];
static __thread int depth;

static void (*_Atomic cem_exit_handler)(uint64_t hook, uint64_t function, uint64_t return_value);

void cem_set_exit_handler(void (*handler)(uint64_t, uint64_t, uint64_t)) { atomic_store(&cem_exit_handler, handler); }

int cem_shadow_push(uint64_t return_address, uint64_t hook, uint64_t function) {
    if (depth >= SHADOW_DEPTH) return 0;
    stack[depth++] = (struct shadow){return_address, hook, function};
    return 1;
}

uint64_t cem_shadow_pop(uint64_t return_value, uint64_t *slot) {
    struct shadow s = stack[--depth];
    *slot = s.return_address;  // before the handler: its backtrace unwinds through this slot
    void (*handler)(uint64_t, uint64_t, uint64_t) = cem_exit_handler;
    if (handler) handler(s.hook, s.function, return_value);
    return s.return_address;
}

uint64_t cem_shadow_push_address(void) { return (uint64_t)(uintptr_t)&cem_shadow_push; }
uint64_t cem_shadow_pop_address(void) { return (uint64_t)(uintptr_t)&cem_shadow_pop; }
int cem_shadow_depth(void) { return depth; }

uint32_t cem_xsave_size(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0;  // OSXSAVE
    __cpuid_count(0x0D, 0, a, b, c, d);
    return b;  // size for the components enabled in XCR0
}
