/* Peer benchmark: one eBPF object on uBPF (JIT and interpreter) against the same C compiled natively.
 *
 *   harness PROG.o      (built by compare.sh: this file + libubpf.a + PROG.c compiled natively with
 *                        -Dentry=native_clang_entry and, if gcc is there, -Dentry=native_gcc_entry)
 *
 * Prints one line of key=value pairs (see compare.sh and README.md for the keys). The object is linked
 * here, not by ubpf_load_elf: the entry function's section is put first, the other executable sections
 * after it, local calls (R_BPF_64_32, call src=1) are re-aimed, and each R_BPF_64_64 lddw of a data
 * section (.rodata) gets the address of a copy of that section made here.
 *
 * Input: 4096 bytes, byte k = low byte of the k-th SplitMix64 output (state 5); every call gets a fresh
 * copy. Run time = (min over rounds of a batch of [copy + indirect call]) / calls - the same for a no-op
 * function, so neither the 4 KiB copy nor the call itself is counted (the JIT's own prologue is). */
#define _POSIX_C_SOURCE 200809L
#include <elf.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <ubpf.h>

#ifndef R_BPF_64_64
#define R_BPF_64_64 1
#endif
#define R_BPF_64_32_LEGACY 2
#define R_BPF_64_32 10

typedef uint64_t (*prog_fn)(uint8_t *mem, uint64_t len);
uint64_t native_clang_entry(uint8_t *mem, uint64_t len);
#ifdef HAVE_GCC_NATIVE
uint64_t native_gcc_entry(uint8_t *mem, uint64_t len);
#endif

enum { LEN = 4096, MAX_SECTIONS = 64, COMPILES = 50 };
static uint8_t input[LEN];
static double target_batch_us = 2000;
static int rounds = 15;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void make_input(void) {
    uint64_t state = 5;
    for (int k = 0; k < LEN; k++) {
        state += 0x9E3779B97F4A7C15ull;
        uint64_t z = state;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        input[k] = (uint8_t)(z ^ (z >> 31));
    }
}

static uint64_t fnv1a(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* ---- The object, linked into one instruction array ---- */

struct linked {
    uint64_t *code;                 /* instructions, 8 bytes each */
    uint32_t count;                 /* loaded into uBPF */
    uint32_t object_insns;          /* in the object's executable sections */
    int pads;                       /* unreachable exits added for uBPF's validator */
    uint8_t *data[MAX_SECTIONS];    /* copies of data sections (index = ELF section) */
    uint64_t data_size[MAX_SECTIONS];
    char error[160];
};

static int link_fail(struct linked *l, const char *msg, const char *arg) {
    snprintf(l->error, sizeof l->error, "%s%s", msg, arg ? arg : "");
    return -1;
}

static int link_elf(const uint8_t *elf, size_t size, struct linked *l) {
    const Elf64_Ehdr *eh = (const void *)elf;
    if (size < sizeof *eh || memcmp(eh->e_ident, ELFMAG, SELFMAG) || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
        eh->e_shnum > MAX_SECTIONS || eh->e_shoff + (uint64_t)eh->e_shnum * sizeof(Elf64_Shdr) > size)
        return link_fail(l, "not a 64-bit ELF object", NULL);
    const Elf64_Shdr *sh = (const void *)(elf + eh->e_shoff);
    int n = eh->e_shnum;
    for (int i = 0; i < n; i++)
        if (sh[i].sh_type != SHT_NOBITS && sh[i].sh_offset + sh[i].sh_size > size) return link_fail(l, "bad section", NULL);
    const Elf64_Sym *syms = NULL;
    size_t nsyms = 0;
    const char *strtab = NULL;
    for (int i = 0; i < n; i++)
        if (sh[i].sh_type == SHT_SYMTAB && sh[i].sh_link < (unsigned)n) {
            syms = (const void *)(elf + sh[i].sh_offset);
            nsyms = sh[i].sh_size / sizeof *syms;
            strtab = (const char *)elf + sh[sh[i].sh_link].sh_offset;
        }
    if (!syms) return link_fail(l, "no symbol table", NULL);

    /* The entry function: its section goes first (a leading ja skips to it if it is not at 0). */
    int entry_sec = -1;
    uint64_t entry_off = 0;
    for (size_t i = 0; i < nsyms; i++)
        if (ELF64_ST_TYPE(syms[i].st_info) == STT_FUNC && !strcmp(strtab + syms[i].st_name, "entry")) {
            entry_sec = syms[i].st_shndx;
            entry_off = syms[i].st_value / 8;
        }
    if (entry_sec <= 0 || entry_sec >= n) return link_fail(l, "no function named entry", NULL);

    int64_t base[MAX_SECTIONS];      /* first instruction of each executable section, or -1 */
    uint32_t total = entry_off ? 1 : 0;
    for (int i = 0; i < n; i++) base[i] = -1;
    for (int pass = 0; pass < 2; pass++)  /* the entry's section first, then the others in order */
        for (int i = 0; i < n; i++) {
            int exec = sh[i].sh_type == SHT_PROGBITS && (sh[i].sh_flags & SHF_EXECINSTR) && sh[i].sh_size;
            if (exec && (pass == 0 ? i == entry_sec : i != entry_sec)) {
                base[i] = total;
                total += (uint32_t)(sh[i].sh_size / 8);
                l->object_insns += (uint32_t)(sh[i].sh_size / 8);
                /* uBPF's validator (check_for_self_contained_sub_programs) wants each sub-program to
                 * end with exit or have a ja second to last (an off-by-one: a final ja is refused), so
                 * a section that ends in anything but exit gets an unreachable exit after it. */
                if (elf[sh[i].sh_offset + sh[i].sh_size - 8] != 0x95) {
                    l->pads++;
                    total++;
                }
            }
        }
    l->code = calloc(total, 8);
    l->count = total;
    if (entry_off) l->code[0] = 0x05 | ((uint64_t)(uint16_t)(entry_off) << 16); /* ja +entry_off */
    for (int i = 0; i < n; i++)
        if (base[i] >= 0) {
            memcpy(l->code + base[i], elf + sh[i].sh_offset, sh[i].sh_size & ~7ull);
            if (elf[sh[i].sh_offset + sh[i].sh_size - 8] != 0x95) l->code[base[i] + sh[i].sh_size / 8] = 0x95;
        }

    for (int r = 0; r < n; r++) {
        if (sh[r].sh_type != SHT_REL || sh[r].sh_info >= (unsigned)n || base[sh[r].sh_info] < 0) continue;
        int target_sec = (int)sh[r].sh_info;
        const Elf64_Rel *rel = (const void *)(elf + sh[r].sh_offset);
        for (size_t k = 0; k < sh[r].sh_size / sizeof *rel; k++) {
            if (ELF64_R_SYM(rel[k].r_info) >= nsyms || rel[k].r_offset + 8 > sh[target_sec].sh_size)
                return link_fail(l, "bad relocation", NULL);
            const Elf64_Sym *s = &syms[ELF64_R_SYM(rel[k].r_info)];
            uint64_t at = (uint64_t)base[target_sec] + rel[k].r_offset / 8;
            uint8_t *insn = (uint8_t *)(l->code + at);
            int32_t imm;
            memcpy(&imm, insn + 4, 4);
            int sec = s->st_shndx;
            if (sec <= 0 || sec >= n) return link_fail(l, "relocation against an undefined symbol: ", strtab + s->st_name);
            switch (ELF64_R_TYPE(rel[k].r_info)) {
            case R_BPF_64_64: {
                if (insn[0] != 0x18 || at + 1 >= l->count || !(sh[sec].sh_flags & SHF_ALLOC) || (sh[sec].sh_flags & SHF_EXECINSTR))
                    return link_fail(l, "unsupported R_BPF_64_64 (only lddw of a data section)", NULL);
                if (!l->data[sec]) {
                    l->data_size[sec] = sh[sec].sh_size;
                    l->data[sec] = aligned_alloc(64, (sh[sec].sh_size + 64) & ~63ull);
                    memset(l->data[sec], 0, (sh[sec].sh_size + 64) & ~63ull);
                    if (sh[sec].sh_type != SHT_NOBITS) memcpy(l->data[sec], elf + sh[sec].sh_offset, sh[sec].sh_size);
                }
                uint32_t hi;
                memcpy(&hi, insn + 12, 4);
                uint64_t addend = (uint32_t)imm | (uint64_t)hi << 32;
                uint64_t addr = (uint64_t)(uintptr_t)l->data[sec] + s->st_value + addend;
                uint32_t lo32 = (uint32_t)addr, hi32 = (uint32_t)(addr >> 32);
                memcpy(insn + 4, &lo32, 4);
                memcpy(insn + 12, &hi32, 4);
                break;
            }
            case R_BPF_64_32:
            case R_BPF_64_32_LEGACY: {
                if (insn[0] != 0x85 || (insn[1] >> 4) != 1 || base[sec] < 0)
                    return link_fail(l, "unsupported R_BPF_64_32 (only local calls): ", strtab + s->st_name);
                int64_t dest = base[sec] + (int64_t)(s->st_value / 8) + imm + 1;
                int32_t rel32 = (int32_t)(dest - (int64_t)(at + 1));
                memcpy(insn + 4, &rel32, 4);
                break;
            }
            default:
                return link_fail(l, "unsupported relocation type", NULL);
            }
        }
    }
    for (uint32_t i = 0; i < l->count; i++) {
        const uint8_t *insn = (const uint8_t *)(l->code + i);
        if (insn[0] == 0x85 && (insn[1] >> 4) == 0) return link_fail(l, "helper calls are not wired up in this harness", NULL);
        if (insn[0] == 0x18) i++;
    }
    return 0;
}

/* ---- uBPF ---- */

static struct linked prog;
static struct ubpf_vm *interp_vm;
static prog_fn jit_fn;

static bool data_bounds(void *ctx, uint64_t addr, uint64_t size) {
    const struct linked *l = ctx;
    for (int i = 0; i < MAX_SECTIONS; i++) {
        uint64_t b = (uint64_t)(uintptr_t)l->data[i];
        if (l->data[i] && addr >= b && addr + size <= b + l->data_size[i]) return true;
    }
    return false;
}

static int quiet_printf(FILE *f, const char *fmt, ...) { (void)f; (void)fmt; return 0; }

/* A VM with the program loaded; the JIT-compiled function if jit. */
static struct ubpf_vm *make_vm(prog_fn *jit, uint64_t *load_ns, uint64_t *compile_ns, char *err, size_t errlen) {
    struct ubpf_vm *vm = ubpf_create();
    char *msg = NULL;
    if (!vm) { snprintf(err, errlen, "ubpf_create failed"); return NULL; }
    ubpf_set_error_print(vm, quiet_printf);
    ubpf_register_data_bounds_check(vm, &prog, data_bounds);
    uint64_t t0 = now_ns();
    int rc = ubpf_load(vm, prog.code, prog.count * 8, &msg);
    uint64_t t1 = now_ns();
    if (rc < 0) goto fail;
    if (jit) {
        *jit = (prog_fn)ubpf_compile(vm, &msg); /* ubpf_jit_fn takes (void *, size_t): the same ABI */
        if (!*jit) goto fail;
    }
    uint64_t t2 = now_ns();
    if (load_ns) *load_ns = t1 - t0;
    if (compile_ns) *compile_ns = t2 - t1;
    return vm;
fail:
    snprintf(err, errlen, "%s", msg ? msg : "unknown uBPF error");
    for (char *p = err; *p; p++) if (*p == '\n' || *p == '"') *p = ' ';
    free(msg);
    ubpf_destroy(vm);
    return NULL;
}

static uint64_t interp_call(uint8_t *mem, uint64_t len) {
    uint64_t r0 = 0;
    if (ubpf_exec(interp_vm, mem, len, &r0) < 0) return 0xdeadbeefdeadbeefull;
    return r0;
}

/* Runs f once in a child (so a crash or hang of uBPF's code is reported, not fatal): r0 and the
 * hash of the memory afterwards, or -1. */
static int probe(prog_fn f, uint64_t out[2]) {
    int fds[2];
    if (pipe(fds)) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        static uint8_t mem[LEN];
        alarm(10);
        memcpy(mem, input, LEN);
        uint64_t res[2];
        res[0] = f(mem, LEN);
        res[1] = fnv1a(mem, LEN);
        ssize_t w = write(fds[1], res, sizeof res);
        _exit(w == sizeof res ? 0 : 1);
    }
    close(fds[1]);
    ssize_t got = read(fds[0], out, 2 * sizeof(uint64_t));
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    return got == 2 * sizeof(uint64_t) && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* ---- Timing ---- */

static __attribute__((noinline)) uint64_t noop(uint8_t *mem, uint64_t len) {
    __asm__ volatile("" : : "r"(mem), "r"(len) : "memory");
    return 0;
}

struct engine {
    const char *key;
    prog_fn fn;
    long calls;       /* per batch */
    double best_ns;   /* min batch time / calls */
    int ok;
    int is_ubpf;
};

static uint64_t sink;

static double batch(prog_fn f, long calls) {
    static uint8_t mem[LEN];
    prog_fn volatile fp = f;
    uint64_t acc = 0, t0 = now_ns();
    for (long i = 0; i < calls; i++) {
        memcpy(mem, input, LEN);
        acc += fp(mem, LEN);
    }
    uint64_t t1 = now_ns();
    sink += acc;
    return (double)(t1 - t0) / (double)calls;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PROG.o [ROUNDS [BATCH_US [JIT_DUMP_FILE]]]\n", argv[0]);
        return 2;
    }
    if (argc > 2) rounds = atoi(argv[2]) > 0 ? atoi(argv[2]) : rounds;
    if (argc > 3) target_batch_us = atof(argv[3]) > 0 ? atof(argv[3]) : target_batch_us;
    make_input();
    const char *name = strrchr(argv[1], '/') ? strrchr(argv[1], '/') + 1 : argv[1];
    printf("program=%.*s", (int)(strcspn(name, ".")), name);

    FILE *f = fopen(argv[1], "rb");
    static uint8_t elf[1 << 20];
    size_t size = f ? fread(elf, 1, sizeof elf, f) : 0;
    if (f) fclose(f);
    char ubpf_error[200] = "";
    int ubpf_ok = size > 0 && link_elf(elf, size, &prog) == 0;
    if (!ubpf_ok) snprintf(ubpf_error, sizeof ubpf_error, "link: %s", size ? prog.error : "cannot read object");
    printf(" insns=%u ubpf_insns=%u ubpf_pads=%d", prog.object_insns, prog.count, prog.pads);

    /* Compile time: COMPILES fresh VMs; min of ubpf_load, of ubpf_compile, and of their sum. */
    uint64_t best_load = UINT64_MAX, best_compile = UINT64_MAX, best_both = UINT64_MAX;
    for (int i = 0; ubpf_ok && i < COMPILES; i++) {
        uint64_t load_ns, compile_ns;
        prog_fn fn;
        struct ubpf_vm *vm = make_vm(&fn, &load_ns, &compile_ns, ubpf_error, sizeof ubpf_error);
        if (!vm) { ubpf_ok = 0; break; }
        if (load_ns < best_load) best_load = load_ns;
        if (compile_ns < best_compile) best_compile = compile_ns;
        if (load_ns + compile_ns < best_both) best_both = load_ns + compile_ns;
        ubpf_destroy(vm);
    }
    struct ubpf_vm *jit_vm = NULL;
    if (ubpf_ok) jit_vm = make_vm(&jit_fn, NULL, NULL, ubpf_error, sizeof ubpf_error);
    if (ubpf_ok) interp_vm = make_vm(NULL, NULL, NULL, ubpf_error, sizeof ubpf_error);
    ubpf_ok = ubpf_ok && jit_vm && interp_vm;
    if (ubpf_ok) {
        uint8_t buf[1 << 16];
        size_t jit_size = sizeof buf;
        char *msg = NULL;
        if (ubpf_translate(jit_vm, buf, &jit_size, &msg) == 0) {
            printf(" ubpf_jit_bytes=%zu", jit_size);
            FILE *d = argc > 4 ? fopen(argv[4], "wb") : NULL; /* the JIT's x86-64 code, for objdump */
            if (d) { fwrite(buf, 1, jit_size, d); fclose(d); }
        }
        free(msg);
        printf(" ubpf_load_us=%.2f ubpf_jit_compile_us=%.2f ubpf_compile_us=%.2f", best_load / 1e3, best_compile / 1e3,
               best_both / 1e3);
    }

    struct engine engines[] = {
        {"copy", noop, 0, 0, 1, 0},
        {"native_clang", native_clang_entry, 0, 0, 1, 0},
#ifdef HAVE_GCC_NATIVE
        {"native_gcc", native_gcc_entry, 0, 0, 1, 0},
#endif
        {"ubpf_jit", jit_fn, 0, 0, ubpf_ok, 1},  /* the JIT's code itself is called */
        {"ubpf_interp", interp_call, 0, 0, ubpf_ok, 1},
    };
    int ne = (int)(sizeof engines / sizeof engines[0]);

    /* Correctness: each engine once, in a child; all must agree with native clang. */
    uint64_t ref[2] = {0, 0};
    int mismatch = 0;
    for (int e = 1; e < ne; e++) {
        uint64_t got[2];
        if (!engines[e].ok) continue;
        if (probe(engines[e].fn, got) < 0) {
            engines[e].ok = 0;
            if (engines[e].is_ubpf) { ubpf_ok = 0; snprintf(ubpf_error, sizeof ubpf_error, "%s crashed or hung", engines[e].key); }
            continue;
        }
        if (e == 1) memcpy(ref, got, sizeof ref);
        else if (got[0] != ref[0] || got[1] != ref[1]) {
            printf(" %s_r0=0x%llx %s_mem_fnv=0x%016llx", engines[e].key, (unsigned long long)got[0], engines[e].key,
                   (unsigned long long)got[1]);
            mismatch = 1;
        }
    }
    printf(" r0=0x%llx r0_dec=%llu mem_fnv=0x%016llx", (unsigned long long)ref[0], (unsigned long long)ref[0],
           (unsigned long long)ref[1]);

    /* Calibrate batch sizes to about target_batch_us, then interleave the engines over the rounds. */
    for (int e = 0; e < ne; e++) {
        if (!engines[e].ok) continue;
        double t = batch(engines[e].fn, 1);
        t = batch(engines[e].fn, 1) < t ? batch(engines[e].fn, 1) : t;
        long calls = (long)(target_batch_us * 1e3 / (t > 1 ? t : 1));
        engines[e].calls = calls < 1 ? 1 : calls > 1000000 ? 1000000 : calls;
        engines[e].best_ns = 1e300;
    }
    for (int r = 0; r < rounds; r++)
        for (int e = 0; e < ne; e++) {
            if (!engines[e].ok) continue;
            double t = batch(engines[e].fn, engines[e].calls);
            if (t < engines[e].best_ns) engines[e].best_ns = t;
        }
    double copy_ns = engines[0].best_ns;
    printf(" copy_us=%.3f", copy_ns / 1e3);
    for (int e = 1; e < ne; e++) {
        if (!engines[e].ok) continue;
        double us = (engines[e].best_ns - copy_ns) / 1e3;
        printf(" %s_us=%.3f", engines[e].key, us > 0 ? us : 0);
    }
    if (!ubpf_ok) printf(" status=ubpf-failed reason=\"%s\"\n", ubpf_error);
    else printf(" status=%s\n", mismatch ? "MISMATCH" : "ok");
    return sink == 42 ? 1 : 0; /* sink keeps the results live */
}
