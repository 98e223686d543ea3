/* A small driver for the distribution's static zlib: compress, uncompress, checksum. */
#include <stdio.h>
#include <string.h>
#include <zlib.h>

int main(void) {
    static unsigned char input[20000], packed[30000], unpacked[20000];
    for (int i = 0; i < (int)sizeof input; i++) input[i] = (unsigned char)("the quick brown fox "[i % 20] + i / 1000);
    uLongf packedLength = sizeof packed, unpackedLength = sizeof unpacked;
    if (compress2(packed, &packedLength, input, sizeof input, 9) != Z_OK) return 1;
    if (uncompress(unpacked, &unpackedLength, packed, packedLength) != Z_OK) return 2;
    printf("zlib %s: %lu -> %lu bytes, round trip %s, crc32 %08lx, adler32 %08lx\n", zlibVersion(),
           (unsigned long)sizeof input, (unsigned long)packedLength, memcmp(input, unpacked, sizeof input) ? "differs" : "ok",
           crc32(0, input, sizeof input), adler32(1, input, sizeof input));
    return 0;
}
