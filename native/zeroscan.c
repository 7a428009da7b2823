/* Zero-block detection for snapshot ingest (DESIGN.md §4).
 *
 * Guest memory blocks that hold data are almost always non-zero in their
 * first bytes, so the first 256-byte stripe is ORed into one 16-byte vector
 * (GCC/Clang vector extension: SSE2 on x86-64, NEON on arm64) for a cheap
 * early exit.  A block that passes must be read to its end; that part is
 * bound by memory bandwidth and goes to libc's memcmp() against a static zero
 * block, whose per-CPU tuned loop beat a portable one here (bench/zeroscan_bench.py).
 */
#define _GNU_SOURCE
#include "zeroscan.h"
#include "fdio.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define STRIPE 256u
#define FD_CHUNK (4u << 20) /* pread granularity for file scans */

typedef uint64_t u64x2 __attribute__((vector_size(16)));

static const uint8_t zero_block[1u << 16];

static int memcmp_is_zero(const uint8_t *p, uint64_t n)
{
    while (n > 0) {
        uint64_t k = n < sizeof zero_block ? n : sizeof zero_block;
        if (memcmp(p, zero_block, k) != 0)
            return 0;
        p += k;
        n -= k;
    }
    return 1;
}

static int block_is_zero(const uint8_t *p, uint64_t n)
{
    if (n < STRIPE)
        return memcmp_is_zero(p, n);
    u64x2 v[STRIPE / sizeof(u64x2)];
    memcpy(v, p, sizeof v); /* aligned or not, no aliasing UB */
    u64x2 x = ((v[0] | v[1]) | (v[2] | v[3])) | ((v[4] | v[5]) | (v[6] | v[7])) |
              ((v[8] | v[9]) | (v[10] | v[11])) | ((v[12] | v[13]) | (v[14] | v[15]));
    if ((x[0] | x[1]) != 0)
        return 0;
    return memcmp_is_zero(p + STRIPE, n - STRIPE);
}

static uint64_t block_count(uint64_t len, uint64_t block_size)
{
    return len / block_size + (len % block_size != 0);
}

static void set_bit(uint8_t *bitmap, uint64_t i, int value)
{
    uint8_t mask = (uint8_t)(1u << (i & 7u));
    if (value)
        bitmap[i >> 3] |= mask;
    else
        bitmap[i >> 3] &= (uint8_t)~mask;
}

typedef int (*zero_pred)(const uint8_t *, uint64_t);

/* Scan `len` bytes at `buf` whose first block is block `first` of the bitmap. */
static int64_t scan_span(const uint8_t *buf, uint64_t len, uint64_t block_size,
                         uint8_t *bitmap, uint64_t first, zero_pred pred)
{
    int64_t zeros = 0;
    uint64_t nblocks = block_count(len, block_size);
    for (uint64_t b = 0; b < nblocks; b++) {
        uint64_t off = b * block_size;
        uint64_t n = len - off < block_size ? len - off : block_size;
        int z = pred(buf + off, n);
        set_bit(bitmap, first + b, z);
        zeros += z;
    }
    return zeros;
}

static int64_t scan_buf_with(const uint8_t *buf, uint64_t len,
                             uint64_t block_size, uint8_t *bitmap,
                             zero_pred pred)
{
    if (block_size == 0 || (len != 0 && (buf == NULL || bitmap == NULL)))
        return -EINVAL;
    uint64_t nblocks = block_count(len, block_size);
    if (nblocks % 8)
        bitmap[nblocks / 8] = 0; /* clear the unused tail bits */
    return scan_span(buf, len, block_size, bitmap, 0, pred);
}

int64_t wr_zero_scan_buf(const uint8_t *buf, uint64_t len, uint64_t block_size,
                         uint8_t *bitmap)
{
    return scan_buf_with(buf, len, block_size, bitmap, block_is_zero);
}

int64_t wr_zero_scan_buf_memcmp(const uint8_t *buf, uint64_t len,
                                uint64_t block_size, uint8_t *bitmap)
{
    return scan_buf_with(buf, len, block_size, bitmap, memcmp_is_zero);
}

static void mark_range(uint8_t *bitmap, uint64_t first, uint64_t count)
{
    for (uint64_t i = 0; i < count; i++)
        set_bit(bitmap, first + i, 1);
}

/* Scan the data region [pos, end) (block-aligned pos) chunk by chunk. */
static int64_t scan_data(int fd, uint8_t *chunk, uint64_t pos, uint64_t end,
                         uint64_t base, uint64_t block_size, uint8_t *bitmap)
{
    int64_t zeros = 0;
    uint64_t chunk_len = FD_CHUNK - FD_CHUNK % block_size;
    if (chunk_len == 0)
        chunk_len = block_size;
    while (pos < end) {
        uint64_t n = end - pos < chunk_len ? end - pos : chunk_len;
        int rc = wr_pread_full(fd, chunk, n, pos);
        if (rc < 0)
            return rc;
        zeros += scan_span(chunk, n, block_size, bitmap,
                           (pos - base) / block_size, block_is_zero);
        pos += n;
    }
    return zeros;
}

static uint64_t round_down(uint64_t x, uint64_t base, uint64_t block_size)
{
    return x - (x - base) % block_size;
}

static uint64_t round_up(uint64_t x, uint64_t base, uint64_t block_size,
                         uint64_t end)
{
    uint64_t rem = (x - base) % block_size;
    uint64_t r = rem ? x + (block_size - rem) : x;
    return r < end ? r : end;
}

int64_t wr_zero_scan_fd(int fd, uint64_t offset, uint64_t len,
                        uint64_t block_size, uint8_t *bitmap)
{
    struct stat st;
    if (block_size == 0 || offset % block_size != 0 || len > INT64_MAX - offset)
        return -EINVAL;
    if (fstat(fd, &st) < 0)
        return -errno;
    if ((uint64_t)st.st_size < offset + len)
        return -EINVAL;
    if (len == 0)
        return 0;
    uint64_t nblocks = block_count(len, block_size);
    memset(bitmap, 0, (size_t)((nblocks + 7) / 8));

    uint8_t *chunk = malloc(FD_CHUNK > block_size ? FD_CHUNK : block_size);
    if (chunk == NULL)
        return -ENOMEM;
    const uint64_t end = offset + len;
    uint64_t pos = offset; /* block-aligned relative to offset, or end */
    int64_t zeros = 0;
    while (pos < end) {
        uint64_t data = end, hole = end;
        int rc = wr_next_extent(fd, pos, end, &data, &hole);
        if (rc < 0) {
            zeros = rc;
            break;
        }
        /* Blocks wholly inside the hole before this extent are zero; pos is
         * block-aligned and data >= pos, so start >= pos. */
        uint64_t start = rc == 1 ? end : round_down(data, offset, block_size);
        uint64_t hole_blocks = rc == 1 ? nblocks - (pos - offset) / block_size
                                       : (start - pos) / block_size;
        mark_range(bitmap, (pos - offset) / block_size, hole_blocks);
        zeros += (int64_t)hole_blocks;
        if (rc == 1)
            break;
        uint64_t stop = round_up(hole, offset, block_size, end);
        int64_t z = scan_data(fd, chunk, start, stop, offset, block_size, bitmap);
        if (z < 0) {
            zeros = z;
            break;
        }
        zeros += z;
        pos = stop;
    }
    free(chunk);
    return zeros;
}
