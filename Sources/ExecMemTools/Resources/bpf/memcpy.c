/* Copies the first half of the memory over the second, reversed in 8-byte words, and sums it. */
#include "bpf_shim.h"

static __attribute__((noinline)) void copy(u8 *dst, const u8 *src, u64 n) {
    for (u64 i = 0; i < n; i++) dst[i] = src[n - 1 - i];
}

ENTRY u64 entry(u8 *mem, u64 len) {
    u64 half = len / 2, sum = 0;
    copy(mem + half, mem, half);
    for (u64 i = 0; i + 8 <= len; i += 8) sum += *(u64 *)(mem + i) ^ i;
    return sum;
}
