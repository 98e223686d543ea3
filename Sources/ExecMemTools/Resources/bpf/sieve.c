/* Counts primes below 8 * len with a sieve kept in the context memory (one bit per number). */
#include "bpf_shim.h"

ENTRY u64 entry(u8 *mem, u64 len) {
    u64 n = len * 8, count = 0;
    for (u64 i = 0; i < len; i++) mem[i] = 0;
    for (u64 i = 2; i < n; i++) {
        if (mem[i >> 3] & (1 << (i & 7))) continue;
        count++;
        for (u64 j = i * i; j < n; j += i) mem[j >> 3] |= (u8)(1 << (j & 7));
    }
    return count;
}
