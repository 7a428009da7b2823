/* Memfile scanning and copying for snapshot ingest, collapse and export. */
#define _GNU_SOURCE
#include "snapshot_io.h"
#include "crc32c.h"
#include "fdio.h"
#include "zeroscan.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK (4u << 20) /* bytes read per pread while scanning */

/* Growing entry list that merges each new entry into the last when it can. */
struct builder {
    struct wr_map_entry *e;
    uint64_t n, cap;
};

static int push(struct builder *b, uint64_t off, uint64_t len, uint32_t source)
{
    int zero = source == WR_SOURCE_ZERO;
    if (b->n > 0) {
        struct wr_map_entry *last = &b->e[b->n - 1];
        if (last->source == source && last->offset + last->length == off) {
            last->length += len; /* storage == offset, so contiguous too */
            return 0;
        }
    }
    if (b->n == b->cap) {
        uint64_t cap = b->cap ? b->cap * 2 : 256;
        struct wr_map_entry *e = realloc(b->e, cap * sizeof *e);
        if (e == NULL)
            return -ENOMEM;
        b->e = e;
        b->cap = cap;
    }
    b->e[b->n++] = (struct wr_map_entry){
        .offset = off, .length = len, .storage_offset = zero ? 0 : off, .source = source};
    return 0;
}

struct scan {
    int fd;
    uint64_t block_size;
    uint32_t source;
    int punch;
    uint8_t *chunk, *bits;
    uint32_t *crcs; /* per block, or NULL */
    struct builder out;
    struct wr_scan_result *res;
};

static int punch_range(struct scan *s, uint64_t off, uint64_t len)
{
    if (!s->punch || len == 0)
        return 0;
    if (fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) < 0)
        return -errno;
    s->res->punched_bytes += len;
    return 0;
}

/* Scan the block-aligned data range [pos, end): emit entries, punch zero runs. */
static int scan_data(struct scan *s, uint64_t pos, uint64_t end)
{
    const uint64_t bs = s->block_size;
    const uint64_t chunk_len = CHUNK >= bs ? CHUNK - CHUNK % bs : bs;
    uint64_t zero_start = 0, zero_len = 0; /* pending run to punch */
    while (pos < end) {
        uint64_t n = end - pos < chunk_len ? end - pos : chunk_len;
        int rc = wr_pread_full(s->fd, s->chunk, n, pos);
        if (rc < 0) {
            s->res->bad_offset = pos;
            return rc;
        }
        int64_t z = wr_zero_scan_buf(s->chunk, n, bs, s->bits);
        if (z < 0)
            return (int)z;
        for (uint64_t b = 0; b < n / bs; b++) {
            uint64_t off = pos + b * bs;
            int zero = (s->bits[b >> 3] >> (b & 7)) & 1;
            /* checksummed while the block is in cache from the zero scan: the
             * generation's integrity record costs no second read */
            if (s->crcs)
                s->crcs[off / bs] = wr_crc32c(0, s->chunk + b * bs, bs);
            rc = push(&s->out, off, bs, zero ? WR_SOURCE_ZERO : s->source);
            if (rc < 0)
                return rc;
            if (zero) {
                s->res->zero_bytes += bs;
                if (zero_len > 0 && zero_start + zero_len == off) {
                    zero_len += bs;
                    continue;
                }
                if ((rc = punch_range(s, zero_start, zero_len)) < 0)
                    return rc;
                zero_start = off;
                zero_len = bs;
            } else {
                s->res->data_bytes += bs;
            }
        }
        pos += n;
    }
    return punch_range(s, zero_start, zero_len);
}

static int scan_extents(struct scan *s, uint64_t memory_size, int mode)
{
    const uint64_t bs = s->block_size;
    uint64_t pos = 0;
    while (pos < memory_size) {
        uint64_t data = memory_size, hole = memory_size;
        int rc = wr_next_extent(s->fd, pos, memory_size, &data, &hole);
        if (rc < 0)
            return rc;
        if (mode == WR_SCAN_DIFF && rc == 0 && (data % bs || hole % bs)) {
            s->res->bad_offset = data % bs ? data : hole;
            return -EINVAL;
        }
        /* Full: a block partly in a hole is scanned as data (the hole part
         * reads as zeros); whole-hole blocks are zero without reading. */
        uint64_t start = rc == 1 ? memory_size : data - data % bs;
        uint64_t stop = rc == 1 ? memory_size : (hole % bs ? hole + (bs - hole % bs) : hole);
        if (stop > memory_size)
            stop = memory_size;
        if (mode == WR_SCAN_FULL && start > pos) {
            if ((rc = push(&s->out, pos, start - pos, WR_SOURCE_ZERO)) < 0)
                return rc;
            s->res->zero_bytes += start - pos;
        }
        if (start >= memory_size)
            break;
        if ((rc = scan_data(s, start > pos ? start : pos, stop)) < 0)
            return rc;
        pos = stop;
    }
    return 0;
}

int wr_memfile_scan(int fd, uint64_t memory_size, uint64_t block_size,
                    uint32_t source, int mode, int punch,
                    struct wr_scan_result *res, uint32_t *crcs)
{
    memset(res, 0, sizeof *res);
    if (block_size == 0 || memory_size % block_size || source >= WR_SOURCE_ZERO ||
        (mode != WR_SCAN_FULL && mode != WR_SCAN_DIFF) || memory_size > INT64_MAX)
        return -EINVAL;
    struct scan s = {.fd = fd, .block_size = block_size, .source = source,
                     .punch = punch, .crcs = crcs, .res = res};
    uint64_t chunk = CHUNK >= block_size ? CHUNK - CHUNK % block_size : block_size;
    s.chunk = malloc(chunk);
    s.bits = malloc(chunk / block_size / 8 + 1);
    int rc = s.chunk && s.bits ? scan_extents(&s, memory_size, mode) : -ENOMEM;
    free(s.chunk);
    free(s.bits);
    if (rc < 0) {
        free(s.out.e);
        return rc;
    }
    res->entries = s.out.e;
    res->count = s.out.n;
    return 0;
}

void wr_scan_result_free(struct wr_scan_result *res)
{
    free(res->entries);
    res->entries = NULL;
    res->count = 0;
}

static int copy_rw(int in, uint64_t in_off, int out, uint64_t out_off, uint64_t len,
                   uint8_t *buf, uint64_t buf_len)
{
    while (len > 0) {
        uint64_t n = len < buf_len ? len : buf_len;
        int rc = wr_pread_full(in, buf, n, in_off);
        if (rc < 0)
            return rc;
        for (uint64_t done = 0; done < n;) {
            ssize_t w = pwrite(out, buf + done, n - done, (off_t)(out_off + done));
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                return -errno;
            }
            done += (uint64_t)w;
        }
        in_off += n;
        out_off += n;
        len -= n;
    }
    return 0;
}

/* copy_file_range until done; 1 when the kernel cannot do it for this pair. */
static int copy_range(int in, uint64_t in_off, int out, uint64_t out_off, uint64_t len)
{
    while (len > 0) {
        loff_t io = (loff_t)in_off, oo = (loff_t)out_off;
        ssize_t r = copy_file_range(in, &io, out, &oo, len, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)
                return 1;
            return -errno;
        }
        if (r == 0)
            return -EIO; /* source ended early */
        in_off += (uint64_t)r;
        out_off += (uint64_t)r;
        len -= (uint64_t)r;
    }
    return 0;
}

int wr_map_copy_out(const struct wr_map_entry *entries, uint64_t n,
                    const int *fds, uint32_t nfds, int out_fd, uint64_t *failed)
{
    *failed = 0;
    uint8_t *buf = NULL;
    const uint64_t buf_len = CHUNK;
    int use_cfr = 1, rc = 0;
    for (uint64_t i = 0; i < n && rc == 0; i++) {
        const struct wr_map_entry *e = &entries[i];
        *failed = i;
        if (e->source == WR_SOURCE_ZERO)
            continue;
        if (e->source >= nfds) {
            rc = -EINVAL;
            break;
        }
        int in = fds[e->source];
        if (use_cfr) {
            rc = copy_range(in, e->storage_offset, out_fd, e->offset, e->length);
            if (rc != 1)
                continue;
            use_cfr = 0; /* not supported here: fall back for the rest */
        }
        if (buf == NULL && (buf = malloc(buf_len)) == NULL) {
            rc = -ENOMEM;
            break;
        }
        rc = copy_rw(in, e->storage_offset, out_fd, e->offset, e->length, buf, buf_len);
    }
    free(buf);
    return rc;
}

static int verify_entry(const struct wr_map_entry *e, int fd, const uint32_t *crcs, uint64_t bs,
                        uint8_t *buf, uint64_t buf_len, uint64_t *bad_offset)
{
    uint64_t so = e->storage_offset, end = e->storage_offset + e->length;
    while (so < end) {
        uint64_t n = end - so < buf_len ? end - so : buf_len;
        int rc = wr_pread_full(fd, buf, n, so);
        if (rc < 0) {
            *bad_offset = so;
            return rc;
        }
        for (uint64_t b = 0; b < n; b += bs) {
            if (wr_crc32c(0, buf + b, bs) != crcs[(so + b) / bs]) {
                *bad_offset = so + b;
                return -EBADMSG;
            }
        }
        so += n;
    }
    return 0;
}

int wr_map_verify(const struct wr_map_entry *entries, uint64_t n, const int *fds,
                  const uint32_t *const *crcs, uint32_t nfds, uint64_t block_size,
                  uint64_t *failed, uint64_t *bad_offset)
{
    *failed = 0;
    *bad_offset = 0;
    if (block_size == 0 || CHUNK % block_size)
        return -EINVAL;
    uint8_t *buf = NULL;
    int rc = 0;
    for (uint64_t i = 0; i < n && rc == 0; i++) {
        const struct wr_map_entry *e = &entries[i];
        *failed = i;
        if (e->source == WR_SOURCE_ZERO)
            continue;
        if (e->source >= nfds || e->storage_offset % block_size || e->length % block_size)
            return free(buf), -EINVAL;
        if (crcs[e->source] == NULL)
            continue;
        if (buf == NULL && (buf = malloc(CHUNK)) == NULL)
            return -ENOMEM;
        rc = verify_entry(e, fds[e->source], crcs[e->source], block_size, buf, CHUNK, bad_offset);
    }
    free(buf);
    return rc;
}
