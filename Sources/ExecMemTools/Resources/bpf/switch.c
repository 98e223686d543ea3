/* A tiny byte-code machine: a switch over the memory's bytes as opcodes. */
#include "bpf_shim.h"

ENTRY u64 entry(u8 *mem, u64 len) {
    u64 acc = 1, x = 0x1234;
    for (u64 pc = 0; pc < len; pc++) {
        u8 op = mem[pc];
        switch (op & 15) {
        case 0: acc += op; break;
        case 1: acc ^= x; break;
        case 2: acc *= 3; break;
        case 3: x = acc >> 3; break;
        case 4: acc -= x; break;
        case 5: acc = (acc << 7) | (acc >> 57); break;
        case 6: x += op * 17; break;
        case 7: acc &= ~x; break;
        case 8: acc |= (u64)op << 20; break;
        case 9: acc = acc / (x | 1); break;
        case 10: acc = acc % (op + 1); break;
        case 11: x ^= acc; break;
        case 12: acc += mem[(pc + 1) % len]; break;
        case 13: mem[pc] = (u8)acc; break;
        case 14: acc = (s64)acc >> 3; break;
        default: acc += 1;
        }
    }
    return acc ^ x;
}
