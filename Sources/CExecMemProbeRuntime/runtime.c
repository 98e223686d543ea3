// See CExecMemProbeRuntime.h.
#define _GNU_SOURCE
#include "CExecMemProbeRuntime.h"

#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <ucontext.h>

#define MAX_POKES 64

struct poke {
    _Atomic uint64_t address;  // 0: free
    uint64_t target;
    int kind;
    int length;
};

static struct poke pokes[MAX_POKES];
static struct sigaction previous;
static _Atomic int installed;
static _Atomic uint64_t traps;

static void on_trap(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    uint64_t rip = (uint64_t)uc->uc_mcontext.gregs[REG_RIP] - 1;  // int3 has executed
    for (int i = 0; i < MAX_POKES; i++) {
        if (atomic_load_explicit(&pokes[i].address, memory_order_acquire) != rip) continue;
        atomic_fetch_add(&traps, 1);
        switch (pokes[i].kind) {
        case CEM_EMULATE_CALL: {
            uint64_t sp = (uint64_t)uc->uc_mcontext.gregs[REG_RSP] - 8;
            *(uint64_t *)sp = rip + 5;
            uc->uc_mcontext.gregs[REG_RSP] = (greg_t)sp;
            uc->uc_mcontext.gregs[REG_RIP] = (greg_t)pokes[i].target;
            break;
        }
        case CEM_EMULATE_JUMP:
            uc->uc_mcontext.gregs[REG_RIP] = (greg_t)pokes[i].target;
            break;
        default:
            uc->uc_mcontext.gregs[REG_RIP] = (greg_t)(rip + pokes[i].length);
            break;
        }
        return;
    }
    // Not one of ours: hand it to whoever had SIGTRAP before, or die of it as we would have.
    if (previous.sa_flags & SA_SIGINFO) {
        if (previous.sa_sigaction) { previous.sa_sigaction(sig, info, context); return; }
    } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(sig);
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
    return sigaction(SIGTRAP, &sa, &previous);
}

int cem_poke_begin(uint64_t address, int kind, uint64_t target, int length) {
    for (int i = 0; i < MAX_POKES; i++) {
        uint64_t free_slot = 0;
        if (atomic_load(&pokes[i].address) != 0) continue;
        // Claim with a placeholder, fill in, then publish the address.
        if (!atomic_compare_exchange_strong(&pokes[i].address, &free_slot, UINT64_MAX)) continue;
        pokes[i].target = target;
        pokes[i].kind = kind;
        pokes[i].length = length;
        atomic_store_explicit(&pokes[i].address, address, memory_order_release);
        return 0;
    }
    return -1;
}

void cem_poke_end(uint64_t address) {
    for (int i = 0; i < MAX_POKES; i++) {
        uint64_t a = address;
        if (atomic_compare_exchange_strong(&pokes[i].address, &a, 0)) return;
    }
}

uint64_t cem_poke_traps(void) { return atomic_load(&traps); }

// Exit hooks.

#define SHADOW_DEPTH 4096
struct shadow { uint64_t return_address, hook, function; };
static __thread struct shadow stack[SHADOW_DEPTH];
static __thread int depth;

void (*cem_exit_handler)(uint64_t hook, uint64_t function, uint64_t return_value);

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
