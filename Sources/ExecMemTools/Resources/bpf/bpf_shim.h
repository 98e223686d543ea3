/* Lets one C source build both as an eBPF object (clang -target bpf) and natively, so the tests can
 * compare the two. Under eBPF, maps are `SEC("maps") struct bpf_map_def` and helpers are Linux's
 * numbered function pointers; natively, maps are small arrays and helpers plain functions. */
#ifndef BPF_SHIM_H
#define BPF_SHIM_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef signed char s8;
typedef int s32;
typedef long long s64;

#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2

#ifdef __bpf__
#define SEC(name) __attribute__((section(name), used))
struct bpf_map_def { u32 type, key_size, value_size, max_entries, map_flags; };
#define MAP(name, kind, key, value, entries) SEC("maps") struct bpf_map_def name = { kind, key, value, entries, 0 }
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, u64 flags) = (void *)2;
static long (*bpf_map_delete_elem)(void *map, const void *key) = (void *)3;
#define ENTRY SEC("socket")
#else
#include <string.h>
struct native_map { u32 type, key_size, value_size, max_entries, count; u8 used[4096]; u8 keys[4096 * 8]; u8 values[4096 * 8]; };
#define MAP(name, kind, key, value, entries) struct native_map name = { kind, key, value, entries, 0 }
static void *bpf_map_lookup_elem(void *m_, const void *key) {
    struct native_map *m = m_;
    if (m->type == BPF_MAP_TYPE_ARRAY) { u32 i = *(const u32 *)key; return i < m->max_entries ? m->values + i * m->value_size : 0; }
    for (u32 i = 0; i < m->max_entries; i++)
        if (m->used[i] && !memcmp(m->keys + i * m->key_size, key, m->key_size)) return m->values + i * m->value_size;
    return 0;
}
static long bpf_map_update_elem(void *m_, const void *key, const void *value, u64 flags) {
    struct native_map *m = m_;
    void *v = bpf_map_lookup_elem(m, key);
    if (!v && m->type == BPF_MAP_TYPE_HASH)
        for (u32 i = 0; i < m->max_entries; i++)
            if (!m->used[i]) { m->used[i] = 1; memcpy(m->keys + i * m->key_size, key, m->key_size); v = m->values + i * m->value_size; m->count++; break; }
    if (!v) return -7;
    memcpy(v, value, m->value_size);
    return 0;
}
static long bpf_map_delete_elem(void *m_, const void *key) {
    struct native_map *m = m_;
    for (u32 i = 0; i < m->max_entries; i++)
        if (m->used[i] && !memcmp(m->keys + i * m->key_size, key, m->key_size)) { m->used[i] = 0; m->count--; return 0; }
    return -2;
}
#define ENTRY
#endif

#endif
