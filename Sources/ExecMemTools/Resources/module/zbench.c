/* Load-and-run benchmark driver for zlib: compress and uncompress 64 KiB, return a checksum. */
#include <zlib.h>

long bench_main(void) {
    static unsigned char input[65536], packed[70000], unpacked[65536];
    for (int i = 0; i < (int)sizeof input; i++) input[i] = (unsigned char)(i * 7 + i / 251);
    uLongf packedLength = sizeof packed, unpackedLength = sizeof unpacked;
    if (compress2(packed, &packedLength, input, sizeof input, 6) != Z_OK) return -1;
    if (uncompress(unpacked, &unpackedLength, packed, packedLength) != Z_OK) return -2;
    return (long)crc32(0, unpacked, unpackedLength) + (long)packedLength;
}
