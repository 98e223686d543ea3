// See CExecMemProbeRuntime.h.
#define _GNU_SOURCE
#include "CExecMemProbeRuntime.h"

#include <cpuid.h>
#include <dirent.h>
#include <errno.h>
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

static void on_trap(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    uint64_t rip = (uint64_t)uc->uc_mcontext.gregs[REG_RIP] - 1;  // int3 has executed
    atomic_fetch_add(&readers, 1);
    const struct cem_poke *b = atomic_load(&batch);
    const struct cem_poke *p = b ? find(b, atomic_load(&batch_count), rip) : NULL;
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

// The sweep.

#define SWEEP_SIGNAL (SIGRTMAX - 2)
static const struct cem_move *_Atomic sweep_moves;
static _Atomic size_t sweep_count;
static _Atomic uint64_t sweep_acks, sweep_moved;
static _Atomic int sweep_installed;

static void on_sweep(int sig, siginfo_t *info, void *context) {
    (void)sig; (void)info;
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
    atomic_fetch_add(&sweep_acks, 1);
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
    atomic_store(&sweep_count, count);
    atomic_store(&sweep_moves, moves);
    atomic_store(&sweep_acks, 0);
    atomic_store(&sweep_moved, 0);
    pid_t self = (pid_t)syscall(SYS_gettid), pid = getpid();
    DIR *dir = opendir("/proc/self/task");
    if (!dir) return -1;
    struct dirent *e;
    while ((e = readdir(dir))) {
        if (e->d_name[0] == '.') continue;
        pid_t tid = (pid_t)atoi(e->d_name);
        if (tid == self) continue;
        if (blocks_sweep(tid)) { result->unreachable++; continue; }
        if (syscall(SYS_tgkill, pid, tid, SWEEP_SIGNAL) == 0) result->signalled++;  // ESRCH: it has exited
    }
    closedir(dir);
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (atomic_load(&sweep_acks) < result->signalled) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long ms = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (ms > timeout_ms) break;  // it blocked the signal after we looked
        sched_yield();
    }
    atomic_store(&sweep_moves, NULL);
    result->answered = atomic_load(&sweep_acks);
    result->moved = atomic_load(&sweep_moved);
    return 0;
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

uint64_t cem_shadow_pop(uint64_t return_value) {
    struct shadow s = stack[--depth];
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
