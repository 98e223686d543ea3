/* Compares the NUL-separated strings in the memory pairwise; returns a signature of the results. */
#include "bpf_shim.h"

static __attribute__((noinline)) s32 compare(const u8 *a, const u8 *b, u64 limit) {
    for (u64 i = 0; i < limit; i++) {
        if (a[i] != b[i]) return (s32)a[i] - (s32)b[i];
        if (!a[i]) return 0;
    }
    return 0;
}

ENTRY u64 entry(u8 *mem, u64 len) {
    u64 sig = 0, half = len / 2;
    if (len < 2) return 0;
    mem[half - 1] = 0;
    mem[len - 1] = 0;
    for (u64 i = 0; i < 64; i++) {
        u64 a = (i * 7) % half, b = half + (i * 13) % half;
        s32 r = compare(mem + a, mem + b, len - b);
        sig = sig * 31 + (u64)(s64)(r < 0 ? -1 : r > 0 ? 1 : 0) + 1;
    }
    return sig;
}
