/* Native tests of CRC32C: known vectors, both paths agree, piecewise == whole. */
#include "../crc32c.h"
#include "check.h"

#include <stdint.h>
#include <string.h>

static void test_known_vectors(void)
{
    const uint8_t *check = (const uint8_t *)"123456789";
    CHECK(wr_crc32c(0, check, 9) == 0xE3069283u);
    CHECK(wr_crc32c_portable(0, check, 9) == 0xE3069283u);
    CHECK(wr_crc32c(0, check, 0) == 0u);
    /* RFC 3720 B.4: 32 bytes of zeros, 32 bytes of 0xFF */
    uint8_t buf[32];
    memset(buf, 0, sizeof buf);
    CHECK(wr_crc32c(0, buf, 32) == 0x8A9136AAu);
    memset(buf, 0xFF, sizeof buf);
    CHECK(wr_crc32c(0, buf, 32) == 0x62A8AB43u);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)i;
    CHECK(wr_crc32c(0, buf, 32) == 0x46DD794Eu);
}

static void test_paths_agree_and_compose(void)
{
    static uint8_t data[4099];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof data; i++) {
        x = x * 1103515245u + 12345u;
        data[i] = (uint8_t)(x >> 16);
    }
    for (size_t len = 0; len < 64; len++)
        for (size_t start = 0; start < 9; start++)
            CHECK(wr_crc32c(0, data + start, len) == wr_crc32c_portable(0, data + start, len));
    uint32_t whole = wr_crc32c(0, data, sizeof data);
    CHECK(whole == wr_crc32c_portable(0, data, sizeof data));
    for (size_t cut = 0; cut <= sizeof data; cut += 511) {
        uint32_t a = wr_crc32c(0, data, cut);
        CHECK(wr_crc32c(a, data + cut, sizeof data - cut) == whole);
        CHECK(wr_crc32c_portable(a, data + cut, sizeof data - cut) == whole);
    }
    /* every single-bit flip changes the checksum */
    for (size_t bit = 0; bit < 64 * 8; bit++) {
        data[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        CHECK(wr_crc32c(0, data, sizeof data) != whole);
        data[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
}

int main(void)
{
    test_known_vectors();
    test_paths_agree_and_compose();
    return check_report("test_crc32c");
}
