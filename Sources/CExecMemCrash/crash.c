// The crash handler (CExecMemCrash.h). Everything here runs in a signal handler on a thread that
// may hold any lock, so it uses only what is async-signal-safe:
//
//   - names come from the registry's seqlock table (cem_crash_table_lookup), never from the
//     registry itself (its Swift mutex may be held by the faulting thread, and its lookup allocates);
//   - text is formatted by hand into a stack buffer and written with write(2) (no stdio, no malloc);
//   - frames are found by following the frame-pointer chain from the interrupted rbp, each word read
//     with process_vm_readv, which returns EFAULT on a bad address instead of faulting again. Not
//     _Unwind_Backtrace: libgcc takes its object mutex and the dynamic loader's lock to find FDEs,
//     either of which the faulting thread may hold, and it stops at code without CFI.
#define _GNU_SOURCE
#include "CExecMemCrash.h"
#include "CExecMemDebug.h"
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <ucontext.h>
#include <unistd.h>

enum { MAX_FRAMES = 32, ALT_STACK_BYTES = 64 * 1024 };

static const char *prefix = "execmem";
static const int signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP};

// MARK: - Formatting without stdio

struct line { char text[512]; size_t used; };

static void put(struct line *l, const char *s) {
    while (*s && l->used < sizeof l->text - 1) l->text[l->used++] = *s++;
}

static void put_hex(struct line *l, uintptr_t v) {
    char digits[19];
    int n = 0;
    do { digits[n++] = "0123456789abcdef"[v & 15]; v >>= 4; } while (v && n < 16);
    put(l, "0x");
    while (n > 0 && l->used < sizeof l->text - 1) l->text[l->used++] = digits[--n];
}

static void flush(struct line *l) {
    put(l, "\n");
    size_t off = 0;
    while (off < l->used) {
        ssize_t w = write(2, l->text + off, l->used - off);
        if (w <= 0) break;
        off += (size_t)w;
    }
    l->used = 0;
}

/// `name+0xoff [owner] (address)` for registered code, the bare address otherwise. A return address
/// is named by the call before it (`bias` 1: the call may be a function's last instruction).
static int put_location(struct line *l, uintptr_t address, uintptr_t bias) {
    char name[CEM_CRASH_NAME_BYTES], owner[CEM_CRASH_OWNER_BYTES];
    intptr_t offset = cem_crash_table_lookup(address - bias, name, sizeof name, owner, sizeof owner);
    if (offset < 0) { put_hex(l, address); return 0; }
    offset += (intptr_t)bias;
    put(l, name);
    if (offset > 0) { put(l, "+"); put_hex(l, (uintptr_t)offset); }
    if (owner[0]) { put(l, " ["); put(l, owner); put(l, "]"); }
    put(l, " ("); put_hex(l, address); put(l, ")");
    return 1;
}

static const char *signal_name(int sig) {
    switch (sig) {
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGILL: return "SIGILL";
    case SIGFPE: return "SIGFPE";
    case SIGTRAP: return "SIGTRAP";
    default: return "signal";
    }
}

/// Reads one word of this process's memory; 0 when it is not mapped readable.
static int read_word(uintptr_t address, uintptr_t *out) {
    struct iovec local = {out, sizeof *out}, remote = {(void *)address, sizeof *out};
    return process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == (ssize_t)sizeof *out;
}

// MARK: - The handler

static void on_fault(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    uintptr_t pc = (uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
    uintptr_t fp = (uintptr_t)uc->uc_mcontext.gregs[REG_RBP];
    uintptr_t sp = (uintptr_t)uc->uc_mcontext.gregs[REG_RSP];
    // int3 reports the address after itself; name the int3.
    if (sig == SIGTRAP && info->si_code == SI_KERNEL && pc > 0) pc -= 1;

    struct line l = {.used = 0};
    put(&l, prefix); put(&l, ": "); put(&l, signal_name(sig));
    if (sig == SIGSEGV || sig == SIGBUS) { put(&l, " (address "); put_hex(&l, (uintptr_t)info->si_addr); put(&l, ")"); }
    put(&l, " at ");
    put_location(&l, pc, 0);
    flush(&l);

    // The frame-pointer chain: [fp] is the caller's fp, [fp + 8] the return address. Frames grow
    // down, so each step must go up the stack; stop at anything else.
    put(&l, "  #0 "); put_location(&l, pc, 0); flush(&l);
    for (int i = 1; i < MAX_FRAMES && fp >= sp && (fp & 7) == 0 && fp - sp < (64u << 20); i++) {
        uintptr_t next, ret;
        if (!read_word(fp, &next) || !read_word(fp + 8, &ret) || ret == 0) break;
        put(&l, "  #");
        char digits[3] = {(char)('0' + i / 10), (char)('0' + i % 10), 0};
        put(&l, i < 10 ? digits + 1 : digits); put(&l, " ");
        put_location(&l, ret, 1);
        flush(&l);
        if (next <= fp) break;
        fp = next;
    }

    // Die of the same signal with its default action: SA_RESETHAND already restored SIG_DFL, the
    // signal is blocked until this handler returns, and then it is delivered.
    signal(sig, SIG_DFL);
    raise(sig);
}

int cem_crash_install(const char *program) {
    if (program) prefix = program;
    stack_t ss;
    memset(&ss, 0, sizeof ss);
    ss.ss_sp = malloc(ALT_STACK_BYTES);
    ss.ss_size = ALT_STACK_BYTES;
    if (!ss.ss_sp || sigaltstack(&ss, NULL) != 0) return -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++) {
        if (sigaction(signals[i], &sa, NULL) != 0) return -1;
    }
    return 0;
}
