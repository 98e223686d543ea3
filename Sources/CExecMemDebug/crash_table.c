// The signal-safe name table (CExecMemCrashTable.h): chunks of seqlock-guarded slots.
//
//   chunks[0] -> [slot 0 | slot 1 | ... | slot 1023]     allocated on first use, never freed
//   chunks[1] -> [slot 1024 | ...]
//   high       slots ever handed out (readers scan [0, high))
//   free list  slots emptied, reused first (writer only)
//
// A slot's `seq` is odd while the writer changes it. A reader copies the slot, then re-reads `seq`;
// if it changed (or was odd) the copy is discarded and tried again, a few times, then skipped. A
// lookup scans every slot: it runs once per frame of a crash report, where O(slots) is microseconds.
#include "CExecMemCrashTable.h"
#include <stdlib.h>
#include <string.h>

enum { CHUNK_SHIFT = 10, CHUNK_SLOTS = 1 << CHUNK_SHIFT, MAX_CHUNKS = 1024 };  // 1,048,576 slots

struct slot {
    uint64_t seq;
    uintptr_t start, end;  // end == 0: empty
    char name[CEM_CRASH_NAME_BYTES];
    char owner[CEM_CRASH_OWNER_BYTES];
};

static struct slot *chunks[MAX_CHUNKS];
static int32_t high;     // published with release; readers scan below it
static int32_t live;
static int32_t *free_slots;
static int32_t free_count, free_capacity;

static struct slot *slot_at(int32_t i) {
    struct slot *c = __atomic_load_n(&chunks[i >> CHUNK_SHIFT], __ATOMIC_ACQUIRE);
    return c ? &c[i & (CHUNK_SLOTS - 1)] : NULL;
}

static void copy_cut(char *to, size_t capacity, const char *from) {
    size_t n = from ? strlen(from) : 0;
    if (n >= capacity) n = capacity - 1;
    if (n) memcpy(to, from, n);
    to[n] = 0;
}

static void write_slot(struct slot *s, uintptr_t start, uintptr_t end, const char *name, const char *owner) {
    uint64_t seq = __atomic_load_n(&s->seq, __ATOMIC_RELAXED);
    __atomic_store_n(&s->seq, seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&s->start, start, __ATOMIC_RELAXED);
    __atomic_store_n(&s->end, end, __ATOMIC_RELAXED);
    if (end) {
        copy_cut(s->name, sizeof s->name, name);
        copy_cut(s->owner, sizeof s->owner, owner);
    }
    __atomic_store_n(&s->seq, seq + 2, __ATOMIC_RELEASE);
}

int32_t cem_crash_table_add(uintptr_t start, uintptr_t end, const char *name, const char *owner) {
    int32_t i;
    if (free_count > 0) {
        i = free_slots[--free_count];
    } else {
        i = high;
        if (i >= CHUNK_SLOTS * MAX_CHUNKS) return -1;
        if (!chunks[i >> CHUNK_SHIFT]) {
            struct slot *c = calloc(CHUNK_SLOTS, sizeof(struct slot));
            if (!c) return -1;
            __atomic_store_n(&chunks[i >> CHUNK_SHIFT], c, __ATOMIC_RELEASE);
        }
        __atomic_store_n(&high, i + 1, __ATOMIC_RELEASE);
    }
    write_slot(slot_at(i), start, end > start ? end : start + 1, name, owner);
    live++;
    return i;
}

void cem_crash_table_remove(int32_t i) {
    if (i < 0 || i >= high) return;
    struct slot *s = slot_at(i);
    if (!s || s->end == 0) return;
    write_slot(s, 0, 0, NULL, NULL);
    live--;
    if (free_count == free_capacity) {
        int32_t capacity = free_capacity ? free_capacity * 2 : 256;
        int32_t *grown = realloc(free_slots, (size_t)capacity * sizeof *grown);
        if (!grown) return;  // the slot stays empty, never reused: harmless
        free_slots = grown;
        free_capacity = capacity;
    }
    free_slots[free_count++] = i;
}

int32_t cem_crash_table_count(void) { return live; }

intptr_t cem_crash_table_lookup(uintptr_t address, char *name, size_t name_capacity, char *owner, size_t owner_capacity) {
    int32_t n = __atomic_load_n(&high, __ATOMIC_ACQUIRE);
    uintptr_t best_start = 0, best_length = 0;
    int found = 0;
    for (int32_t i = 0; i < n; i++) {
        struct slot *s = slot_at(i);
        if (!s) continue;
        for (int attempt = 0; attempt < 4; attempt++) {
            uint64_t seq = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
            if (seq & 1) continue;
            uintptr_t start = __atomic_load_n(&s->start, __ATOMIC_RELAXED);
            uintptr_t end = __atomic_load_n(&s->end, __ATOMIC_RELAXED);
            // The innermost cover wins: the latest start, then the shortest (a function over the
            // piece it is in, whatever slots they landed in).
            int hit = end != 0 && start <= address && address < end &&
                      (!found || start > best_start || (start == best_start && end - start < best_length));
            char n_copy[CEM_CRASH_NAME_BYTES], o_copy[CEM_CRASH_OWNER_BYTES];
            if (hit) {
                memcpy(n_copy, s->name, sizeof n_copy);
                memcpy(o_copy, s->owner, sizeof o_copy);
            }
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            if (__atomic_load_n(&s->seq, __ATOMIC_RELAXED) != seq) continue;
            if (hit) {
                n_copy[sizeof n_copy - 1] = 0;
                o_copy[sizeof o_copy - 1] = 0;
                if (name_capacity) copy_cut(name, name_capacity, n_copy);
                if (owner_capacity) copy_cut(owner, owner_capacity, o_copy);
                best_start = start;
                best_length = end - start;
                found = 1;
            }
            break;
        }
    }
    return found ? (intptr_t)(address - best_start) : -1;
}
