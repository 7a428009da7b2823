/* CRC32C: slice-by-8 tables (portable) and the SSE4.2 instruction (x86-64),
 * picked once at load time by CPU feature. */
#include "crc32c.h"

#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

#define POLY 0x82F63B78u

static uint32_t table[8][256];

/* Tables are filled when the library is loaded, before any caller can run. */
__attribute__((constructor)) static void crc32c_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1u) ? (c >> 1) ^ POLY : c >> 1;
        table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int k = 1; k < 8; k++)
            table[k][n] = (table[k - 1][n] >> 8) ^ table[0][table[k - 1][n] & 0xFFu];
}

static uint64_t load_le64(const uint8_t *p)
{
    uint64_t w = 0;
    for (int i = 7; i >= 0; i--)
        w = (w << 8) | p[i];
    return w;
}

uint32_t wr_crc32c_portable(uint32_t crc, const uint8_t *buf, uint64_t len)
{
    uint32_t c = ~crc;
    for (; len >= 8; len -= 8, buf += 8) {
        uint64_t w = load_le64(buf) ^ c;
        c = table[7][w & 0xFFu] ^ table[6][(w >> 8) & 0xFFu] ^
            table[5][(w >> 16) & 0xFFu] ^ table[4][(w >> 24) & 0xFFu] ^
            table[3][(w >> 32) & 0xFFu] ^ table[2][(w >> 40) & 0xFFu] ^
            table[1][(w >> 48) & 0xFFu] ^ table[0][w >> 56];
    }
    for (; len > 0; len--, buf++)
        c = (c >> 8) ^ table[0][(c ^ *buf) & 0xFFu];
    return ~c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc,
                                                              const uint8_t *buf,
                                                              uint64_t len)
{
    uint64_t c = ~crc;
    for (; len >= 8; len -= 8, buf += 8) {
        uint64_t w;
        memcpy(&w, buf, sizeof w); /* x86 is little-endian; memcpy avoids misaligned loads */
        c = _mm_crc32_u64(c, w);
    }
    uint32_t c32 = (uint32_t)c;
    for (; len > 0; len--, buf++)
        c32 = _mm_crc32_u8(c32, *buf);
    return ~c32;
}
#endif

uint32_t wr_crc32c(uint32_t crc, const uint8_t *buf, uint64_t len)
{
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2"))
        return crc32c_sse42(crc, buf, len);
#endif
    return wr_crc32c_portable(crc, buf, len);
}
