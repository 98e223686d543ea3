/* CRC-32 (IEEE) of the memory, with the table in .rodata. */
#include "bpf_shim.h"

static const u32 table[16] = {
    0x00000000, 0x1db71064, 0x3b6e20c8, 0x26d930ac, 0x76dc4190, 0x6b6b51f4, 0x4db26158, 0x5005713c,
    0xedb88320, 0xf00f9344, 0xd6d6a3e8, 0xcb61b38c, 0x9b64c2b0, 0x86d3d2d4, 0xa00ae278, 0xbdbdf21c,
};

ENTRY u64 entry(u8 *mem, u64 len) {
    u32 crc = 0xffffffff;
    for (u64 i = 0; i < len; i++) {
        crc ^= mem[i];
        crc = (crc >> 4) ^ table[crc & 15];
        crc = (crc >> 4) ^ table[crc & 15];
    }
    return ~crc;
}
