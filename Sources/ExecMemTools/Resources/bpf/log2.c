/* Sums floor(log2) of the memory's 32-bit words (bit scanning by halving). */
#include "bpf_shim.h"

static __attribute__((noinline)) u32 ilog2(u32 v) {
    u32 r = 0;
    if (v >= 1u << 16) { v >>= 16; r += 16; }
    if (v >= 1u << 8) { v >>= 8; r += 8; }
    if (v >= 1u << 4) { v >>= 4; r += 4; }
    if (v >= 1u << 2) { v >>= 2; r += 2; }
    if (v >= 1u << 1) { r += 1; }
    return r;
}

ENTRY u64 entry(u8 *mem, u64 len) {
    u64 sum = 0;
    for (u64 i = 0; i + 4 <= len; i += 4) sum += ilog2(*(u32 *)(mem + i) | 1) * (i + 1);
    return sum;
}
