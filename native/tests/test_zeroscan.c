/* Native tests of the zero scanner; `make sanitize` runs them under ASan+UBSan. */
#define _GNU_SOURCE
#include "../zeroscan.h"
#include "check.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


/* Reference: byte-by-byte. */
static int64_t reference(const uint8_t *buf, uint64_t len, uint64_t bs, uint8_t *bm)
{
    int64_t zeros = 0;
    uint64_t n = (len + bs - 1) / bs;
    memset(bm, 0, (n + 7) / 8);
    for (uint64_t b = 0; b < n; b++) {
        int z = 1;
        for (uint64_t i = b * bs; i < len && i < (b + 1) * bs; i++)
            z &= buf[i] == 0;
        bm[b / 8] |= (uint8_t)(z << (b % 8));
        zeros += z;
    }
    return zeros;
}

static void compare(const uint8_t *buf, uint64_t len, uint64_t bs)
{
    uint64_t n = (len + bs - 1) / bs, bytes = (n + 7) / 8 + 1;
    uint8_t *want = calloc(bytes, 1), *got = malloc(bytes), *got2 = malloc(bytes);
    memset(got, 0xAB, bytes); /* tail bits must be cleared, not inherited */
    memset(got2, 0xAB, bytes);
    int64_t zw = reference(buf, len, bs, want);
    CHECK_EQ(wr_zero_scan_buf(buf, len, bs, got), zw);
    CHECK_EQ(wr_zero_scan_buf_memcmp(buf, len, bs, got2), zw);
    CHECK(memcmp(want, got, (n + 7) / 8) == 0);
    CHECK(memcmp(want, got2, (n + 7) / 8) == 0);
    free(want);
    free(got);
    free(got2);
}

/* One non-zero byte at every position class of a block: each stripe lane,
 * the tail bytes past the last full stripe, first and last byte. */
static void test_single_byte_positions(void)
{
    const uint64_t bs = 4096 + 72; /* not a multiple of the 64-byte stripe */
    uint8_t *buf = calloc(bs * 3, 1);
    for (uint64_t pos = 0; pos < bs; pos++) {
        buf[bs + pos] = 0x80;
        uint8_t bm[1] = {0};
        CHECK_EQ(wr_zero_scan_buf(buf, bs * 3, bs, bm), 2);
        CHECK_EQ(bm[0], 0x5); /* blocks 0 and 2 zero, block 1 not */
        buf[bs + pos] = 0;
    }
    free(buf);
}

static void test_random(void)
{
    srand(12345);
    for (int iter = 0; iter < 300; iter++) {
        uint64_t bs = (uint64_t)(1 + rand() % 9000);
        uint64_t len = (uint64_t)(rand() % 60000);
        uint8_t *buf = calloc(len + 1, 1);
        /* sparse non-zero bytes so that many blocks stay zero */
        int writes = rand() % 8;
        for (int w = 0; w < writes && len; w++)
            buf[(uint64_t)rand() % len] = (uint8_t)(1 + rand() % 255);
        compare(buf, len, bs);
        free(buf);
    }
}

static void test_edges(void)
{
    uint8_t bm[2] = {0xFF, 0xFF};
    uint8_t z[10] = {0};
    CHECK_EQ(wr_zero_scan_buf(z, 10, 0, bm), -EINVAL);
    CHECK_EQ(wr_zero_scan_buf(NULL, 0, 4096, bm), 0);
    CHECK_EQ(wr_zero_scan_buf(z, 10, 4, bm), 3); /* 4+4+2 */
    CHECK_EQ(bm[0], 0x7);
    z[9] = 1;
    CHECK_EQ(wr_zero_scan_buf(z, 10, 4, bm), 2);
    CHECK_EQ(bm[0], 0x3);
}

/* A file with holes, data blocks that are zero, and data blocks that are not. */
static void test_fd(void)
{
    char path[] = "/tmp/wrennd-zeroscan-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    unlink(path);
    const uint64_t bs = 4096, n = 64;
    CHECK(ftruncate(fd, (off_t)(bs * n)) == 0);
    uint8_t *blk = malloc(bs);
    uint8_t *mem = calloc(bs * n, 1);
    for (uint64_t b = 0; b < n; b++) {
        int kind = (int)(b * 7 % 5); /* 0,1: hole; 2: zero data; 3,4: data */
        if (kind < 2)
            continue;
        memset(blk, 0, bs);
        if (kind >= 3)
            blk[(b * 131) % bs] = (uint8_t)(b | 1);
        memcpy(mem + b * bs, blk, bs);
        CHECK(pwrite(fd, blk, bs, (off_t)(b * bs)) == (ssize_t)bs);
    }
    uint8_t want[8], got[8];
    for (uint64_t start = 0; start < n; start += 5) {
        for (uint64_t len = 0; start * bs + len <= n * bs; len += bs * 3 + 100) {
            int64_t zw = reference(mem + start * bs, len, bs, want);
            memset(got, 0xAB, sizeof got);
            CHECK_EQ(wr_zero_scan_fd(fd, start * bs, len, bs, got), zw);
            CHECK(memcmp(want, got, ((len + bs - 1) / bs + 7) / 8) == 0);
        }
    }
    /* block size larger than the filesystem's allocation unit */
    uint8_t big_want[2], big_got[2];
    int64_t zw = reference(mem, n * bs, bs * 4, big_want);
    CHECK_EQ(wr_zero_scan_fd(fd, 0, n * bs, bs * 4, big_got), zw);
    CHECK(memcmp(big_got, big_want, 2) == 0);
    /* past EOF and misaligned offsets are refused */
    CHECK_EQ(wr_zero_scan_fd(fd, 0, n * bs + 1, bs, got), -EINVAL);
    CHECK_EQ(wr_zero_scan_fd(fd, 1, bs, bs, got), -EINVAL);
    CHECK_EQ(wr_zero_scan_fd(-1, 0, bs, bs, got), -EBADF);
    free(blk);
    free(mem);
    close(fd);
}

int main(void)
{
    test_edges();
    test_single_byte_positions();
    test_random();
    test_fd();
    return check_report("test_zeroscan");
}
