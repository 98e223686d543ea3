/* A byte histogram in a hash map, running totals in an array map, and globals in .data and .bss;
 * returns a digest of all of them. */
#include "bpf_shim.h"

MAP(histogram, BPF_MAP_TYPE_HASH, 1, 8, 256);
MAP(totals, BPF_MAP_TYPE_ARRAY, 4, 8, 4);

static u64 calls = 3;        /* .data */
static u64 scratch[8];       /* .bss */

ENTRY u64 entry(u8 *mem, u64 len) {
    u64 distinct = 0;
    calls++;
    for (u64 i = 0; i < len; i++) {
        u8 key = mem[i] & 63;
        u64 *count = bpf_map_lookup_elem(&histogram, &key);
        if (count) {
            *count += 1;
        } else {
            u64 one = 1;
            bpf_map_update_elem(&histogram, &key, &one, 0);
            distinct++;
        }
        scratch[i & 7] += key;
    }
    u8 gone = 63;
    bpf_map_delete_elem(&histogram, &gone);
    for (u32 k = 0; k < 4; k++) {
        u64 *t = bpf_map_lookup_elem(&totals, &k);
        if (t) *t += distinct * (k + 1);
    }
    u32 k2 = 2;
    u64 *t2 = bpf_map_lookup_elem(&totals, &k2);
    u64 digest = distinct * 1000003 + calls;
    for (u32 i = 0; i < 8; i++) digest = digest * 31 + scratch[i];
    for (u8 key = 0; key < 64; key += 7) {
        u64 *c = bpf_map_lookup_elem(&histogram, &key);
        digest = digest * 17 + (c ? *c : 0);
    }
    return digest + (t2 ? *t2 : 0);
}
