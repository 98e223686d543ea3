// The GDB JIT interface and the unwinder's registration calls, for ExecMem's code registry.
#include "CExecMemDebug.h"
#include <stddef.h>
#include <unwind.h>

// GDB's names and layout, exactly (gdb/jit.h; version 1).
enum { JIT_NOACTION = 0, JIT_REGISTER_FN = 1, JIT_UNREGISTER_FN = 2 };

struct jit_descriptor {
    uint32_t version;
    uint32_t action_flag;
    struct cem_jit_code_entry *relevant_entry;
    struct cem_jit_code_entry *first_entry;
};

// GDB sets a breakpoint here; it must not be inlined or folded away.
void __attribute__((noinline, used, visibility("default"))) __jit_debug_register_code(void) {
    __asm__ volatile("" ::: "memory");
}

struct jit_descriptor __jit_debug_descriptor __attribute__((used, visibility("default"))) = {1, JIT_NOACTION, NULL, NULL};

void cem_jit_register(struct cem_jit_code_entry *entry) {
    entry->prev_entry = NULL;
    entry->next_entry = __jit_debug_descriptor.first_entry;
    if (entry->next_entry) entry->next_entry->prev_entry = entry;
    __jit_debug_descriptor.first_entry = entry;
    __jit_debug_descriptor.relevant_entry = entry;
    __jit_debug_descriptor.action_flag = JIT_REGISTER_FN;
    __jit_debug_register_code();
}

void cem_jit_unregister(struct cem_jit_code_entry *entry) {
    if (entry->prev_entry) entry->prev_entry->next_entry = entry->next_entry;
    else __jit_debug_descriptor.first_entry = entry->next_entry;
    if (entry->next_entry) entry->next_entry->prev_entry = entry->prev_entry;
    __jit_debug_descriptor.relevant_entry = entry;
    __jit_debug_descriptor.action_flag = JIT_UNREGISTER_FN;
    __jit_debug_register_code();
    entry->next_entry = entry->prev_entry = NULL;
}

int cem_jit_entry_count(void) {
    int n = 0;
    for (struct cem_jit_code_entry *e = __jit_debug_descriptor.first_entry; e; e = e->next_entry) n++;
    return n;
}

const struct cem_jit_code_entry *cem_jit_first_entry(void) { return __jit_debug_descriptor.first_entry; }

// libgcc (unwind-dw2-fde.c); not in any installed header.
extern void __register_frame(const void *begin);
extern void __deregister_frame(const void *begin);

void cem_register_frame(const void *section) { __register_frame(section); }
void cem_deregister_frame(const void *section) { __deregister_frame(section); }

struct trace_state { uintptr_t *out; int capacity; int count; int skip; };

static _Unwind_Reason_Code trace_step(struct _Unwind_Context *context, void *arg) {
    struct trace_state *s = arg;
    uintptr_t ip = _Unwind_GetIP(context);
    if (ip == 0) return _URC_END_OF_STACK;
    if (s->skip > 0) { s->skip--; return _URC_NO_REASON; }
    if (s->count >= s->capacity) return _URC_END_OF_STACK;
    s->out[s->count++] = ip;
    return _URC_NO_REASON;
}

int cem_unwind_backtrace(uintptr_t *addresses, int capacity) {
    struct trace_state s = {addresses, capacity, 0, 1};  // skip this function's own frame
    _Unwind_Backtrace(trace_step, &s);
    return s.count;
}

static __thread int batch_depth;
void cem_batch_enter(void) { batch_depth++; }
void cem_batch_leave(void) { batch_depth--; }
int cem_batch_depth(void) { return batch_depth; }
