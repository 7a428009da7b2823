/* Installing pages: the engine's hot path.  Every function here runs with
 * e->lock held (fault thread or prefetch thread).
 *
 * A demand fault installs a window of units around it, across mapping
 * entries (generations, zero runs): first the faulting page's own run inside
 * the smallest window (batch_bytes), so the vCPU wakes after one short ioctl
 * whatever the window's size, then every other ABSENT unit of the window.
 * REMOVED and PRESENT units are never installed by a window (a REMOVED unit
 * is installed, as zeros, only when it faults itself), and a window never
 * leaves the faulting page's handshake region.  The window doubles while the
 * faults follow each other sequentially, up to window_max_bytes, and drops
 * back to batch_bytes on the first fault elsewhere. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/userfaultfd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "crc32c.h"
#include "uffd_engine_int.h"

const struct wr_region *wr_region_of_offset(const struct wr_engine *e, uint64_t off)
{
    for (uint32_t i = 0; i < e->nregions; i++)
        if (off - e->regions[i].offset < e->regions[i].size && off >= e->regions[i].offset)
            return &e->regions[i];
    return NULL;
}

/* Record the first bad block and wake the fault thread so the engine stops
 * even when the prefetch thread found it. */
static int corrupt(struct wr_engine *e, uint32_t source, uint64_t storage_off)
{
    int none = -1;
    if (atomic_compare_exchange_strong(&e->corrupt_source, &none, (int)source))
        atomic_store(&e->corrupt_offset, storage_off);
    atomic_store(&e->stopping, true);
    uint64_t one = 1;
    if (write(e->ctl_fd, &one, sizeof one) < 0) {
        /* the eventfd is non-blocking and far from overflow: nothing to do */
    }
    return -EBADMSG;
}

int wr_verify_range(struct wr_engine *e, uint64_t off, uint64_t len)
{
    uint64_t bs = e->crc_block, end = off + len;
    if (bs == 0)
        return 0; /* no generation has checksums */
    uint64_t i = (uint64_t)wr_map_lookup(e->entries, e->nentries, off);
    while (off < end) {
        const struct wr_map_entry *en = &e->entries[i++];
        uint64_t piece = en->offset + en->length - off;
        if (piece > end - off)
            piece = end - off;
        const uint32_t *crcs = en->source == WR_SOURCE_ZERO ? NULL : e->crcs[en->source];
        if (crcs != NULL) {
            uint64_t so = en->storage_offset + (off - en->offset);
            const uint8_t *src = e->src_maps[en->source];
            for (uint64_t b = so; b < so + piece; b += bs) {
                if (wr_crc32c(0, src + b, bs) != crcs[b / bs])
                    return corrupt(e, en->source, b);
            }
            STAT_ADD(e, verified_blocks, piece / bs);
        }
        off += piece;
    }
    return 0;
}

static const struct wr_region *region_of_addr(const struct wr_engine *e, uint64_t addr)
{
    for (uint32_t i = 0; i < e->nregions; i++)
        if (addr >= e->regions[i].base && addr - e->regions[i].base < e->regions[i].size)
            return &e->regions[i];
    return NULL;
}

static uint64_t host_addr(const struct wr_region *r, uint64_t off)
{
    return r->base + (off - r->offset);
}

static void wake_unit(struct wr_engine *e, const struct wr_region *r, uint64_t unit)
{
    struct uffdio_range range = {.start = host_addr(r, unit * e->cfg.page_size),
                                 .len = e->cfg.page_size};
    /* Best effort: a waiter that is already gone needs no wake. */
    (void)ioctl(e->uffd, UFFDIO_WAKE, &range);
    STAT_ADD(e, wakes, 1);
}

static void mark(struct wr_engine *e, uint64_t first, uint64_t n, uint8_t st)
{
    memset(e->state + first, st, n);
}

/* One ioctl's worth: COPY from src (or from the zero buffer for huge pages),
 * or ZEROPAGE.  Returns bytes installed (> 0) or a negative errno; a partial
 * install reports its bytes (the next call meets the error). */
static int64_t install_ioctl(struct wr_engine *e, uint64_t dst, const uint8_t *src, uint64_t len)
{
    int64_t res;
    int rc;
    if (src == NULL && e->cfg.page_size == e->base_page) {
        struct uffdio_zeropage z = {.range = {.start = dst, .len = len}, .mode = 0};
        rc = ioctl(e->uffd, UFFDIO_ZEROPAGE, &z);
        res = z.zeropage;
    } else {
        /* hugetlb has no zeropage: copy from the (faulted-in) zero unit */
        if (src == NULL && len > e->zeros_len)
            len = e->zeros_len;
        struct uffdio_copy c = {.dst = dst,
                                .src = (uint64_t)(uintptr_t)(src ? src : e->zeros),
                                .len = len,
                                .mode = 0};
        rc = ioctl(e->uffd, UFFDIO_COPY, &c);
        res = c.copy;
    }
    if (rc == 0)
        return (int64_t)len;
    if (res > 0)
        return res;
    return res < 0 ? res : -errno;
}

/* Install units [first, first+n) of region r from src (NULL: zeros).
 * *done counts units now present thanks to this call. */
static int install_run(struct wr_engine *e, const struct wr_region *r, uint64_t first, uint64_t n,
                       const uint8_t *src, bool prefetch, uint64_t *done)
{
    uint64_t ps = e->cfg.page_size, k = 0;
    *done = 0;
    while (k < n) {
        uint64_t off = (first + k) * ps;
        int64_t res = install_ioctl(e, host_addr(r, off), src ? src + k * ps : NULL, (n - k) * ps);
        if (res > 0) {
            uint64_t got = (uint64_t)res / ps;
            mark(e, first + k, got, ST_PRESENT);
            STAT_ADD(e, batches, 1);
            if (src) {
                STAT_ADD(e, copy_pages, got);
                STAT_ADD(e, copy_bytes, got * ps);
            } else {
                STAT_ADD(e, zero_pages, got);
                STAT_ADD(e, zero_bytes, got * ps);
            }
            if (prefetch) {
                STAT_ADD(e, prefetch_pages, got);
                STAT_ADD(e, prefetch_batches, 1);
            }
            k += got;
            *done += got;
        } else if (res == -EEXIST) {
            /* Present already (the kernel knows better than our map): mark it
             * and wake whoever waits on it. */
            STAT_ADD(e, eexist, 1);
            mark(e, first + k, 1, ST_PRESENT);
            wake_unit(e, r, first + k);
            k++;
        } else {
            return (int)res;
        }
    }
    return 0;
}

/* Memory [off, off+len) as the guest must see it, into dst. */
static void assemble(const struct wr_engine *e, uint8_t *dst, uint64_t off, uint64_t len)
{
    uint64_t end = off + len;
    /* found: the entries cover memory (checked at create) */
    uint64_t i = (uint64_t)wr_map_lookup(e->entries, e->nentries, off);
    while (off < end) {
        const struct wr_map_entry *en = &e->entries[i++];
        uint64_t piece = en->offset + en->length - off;
        if (piece > end - off)
            piece = end - off;
        if (en->source == WR_SOURCE_ZERO)
            memset(dst, 0, piece);
        else
            memcpy(dst, e->src_maps[en->source] + en->storage_offset + (off - en->offset), piece);
        dst += piece;
        off += piece;
    }
}

static const uint8_t *entry_src(const struct wr_engine *e, uint64_t i, uint64_t unit)
{
    const struct wr_map_entry *en = &e->entries[i];
    if (en->source == WR_SOURCE_ZERO)
        return NULL;
    return e->src_maps[en->source] + en->storage_offset + (unit * e->cfg.page_size - en->offset);
}

/* Base pages only.  The run of ABSENT units from u (ABSENT itself) to its
 * end, at most hi: one kind, zeros or bytes contiguous in one generation
 * file, so one ioctl installs it.  *src: its bytes (NULL: zeros). */
static uint64_t run_end(const struct wr_engine *e, uint64_t u, uint64_t hi, const uint8_t **src)
{
    uint64_t ps = e->cfg.page_size;
    uint64_t i = (uint64_t)wr_map_lookup(e->entries, e->nentries, u * ps);
    const uint8_t *s = entry_src(e, i, u);
    uint64_t v = u + 1, eend = (e->entries[i].offset + e->entries[i].length) / ps;
    while (v < hi && e->state[v] == ST_ABSENT) {
        if (v == eend) {
            const uint8_t *t = entry_src(e, ++i, v);
            if (s ? t != s + (v - u) * ps : t != NULL)
                break;
            eend = (e->entries[i].offset + e->entries[i].length) / ps;
        }
        v++;
    }
    *src = s;
    return v;
}

static void record_touch(struct wr_engine *e, uint64_t off, uint64_t len)
{
    pthread_mutex_lock(&e->ws_lock);
    if (e->nws && e->ws[e->nws - 1].offset + e->ws[e->nws - 1].length == off) {
        e->ws[e->nws - 1].length += len;
    } else {
        if (e->nws == e->ws_cap) {
            uint64_t cap = e->ws_cap ? e->ws_cap * 2 : 256;
            struct wr_range *n = realloc(e->ws, cap * sizeof *n);
            if (n == NULL) { /* the record is advisory: drop the entry */
                pthread_mutex_unlock(&e->ws_lock);
                return;
            }
            e->ws = n;
            e->ws_cap = cap;
        }
        e->ws[e->nws++] = (struct wr_range){.offset = off, .length = len};
    }
    pthread_mutex_unlock(&e->ws_lock);
}

/* How a span is installed (copy_mode AUTO).  Measured with bench/faultin.py
 * (README, "UFFD engine"): an ioctl costs a few microseconds whatever its
 * length, assembling a page in the bounce buffer well under one, so a span
 * broken into many short runs (scattered Diff pages, interleaved zero and
 * data pages) is far cheaper as one COPY of an assembled buffer.  A span of
 * few long runs keeps one ioctl per run: no second copy of its bytes, and
 * its zero runs stay ZEROPAGE (no memory allocated for them until written). */
#define BOUNCE_MIN_RUNS 3
#define BOUNCE_MAX_AVG_UNITS 16

static bool use_bounce(const struct wr_engine *e, uint64_t a, uint64_t b)
{
    if (e->cfg.page_size > e->base_page || e->cfg.copy_mode == WR_COPY_BOUNCE)
        return true; /* huge units are always assembled: see install_span */
    if (e->cfg.copy_mode == WR_COPY_RUNS)
        return false;
    uint64_t runs = 0;
    const uint8_t *src;
    for (uint64_t u = a; u < b; u = run_end(e, u, b, &src))
        runs++;
    return runs >= BOUNCE_MIN_RUNS && (b - a) < runs * BOUNCE_MAX_AVG_UNITS;
}

/* Install the span [a, b) of ABSENT units of region r.  Huge units go
 * through the bounce buffer always: hugetlb's UFFDIO_COPY from a source that
 * is not yet faulted in falls back to a temporary huge page and fails with
 * ENOMEM when the pool has none spare. */
static int install_span(struct wr_engine *e, const struct wr_region *r, uint64_t a, uint64_t b,
                        bool prefetch, bool record, uint64_t *done)
{
    uint64_t ps = e->cfg.page_size, chunk = e->bounce_len / ps, got;
    bool bounce = use_bounce(e, a, b);
    while (a < b) {
        const uint8_t *src = e->bounce;
        uint64_t end = a + chunk < b ? a + chunk : b;
        if (!bounce)
            end = run_end(e, a, b, &src);
        int rc = wr_verify_range(e, a * ps, (end - a) * ps);
        if (rc < 0)
            return rc;
        if (bounce) {
            assemble(e, e->bounce, a * ps, (end - a) * ps);
            STAT_ADD(e, bounce_batches, 1);
        }
        rc = install_run(e, r, a, end - a, src, prefetch, &got);
        *done += got;
        if (got && record)
            record_touch(e, a * ps, (end - a) * ps);
        if (rc < 0)
            return rc;
        a = end;
    }
    return 0;
}

/* Every ABSENT unit of [lo, hi), all inside region r. */
static int install_range(struct wr_engine *e, const struct wr_region *r, uint64_t lo, uint64_t hi,
                         bool prefetch, bool record, uint64_t *done)
{
    uint64_t u = lo;
    while (u < hi) {
        if (e->state[u] != ST_ABSENT) {
            u++;
            continue;
        }
        uint64_t v = u + 1;
        while (v < hi && e->state[v] == ST_ABSENT)
            v++;
        int rc = install_span(e, r, u, v, prefetch, record, done);
        if (rc < 0)
            return rc;
        u = v;
    }
    return 0;
}

/* The window for a fault on `unit`: grow it when the fault lands where the
 * last window ended (a sequential stream), else back to the smallest. */
static void fault_window(struct wr_engine *e, const struct wr_region *r, uint64_t unit,
                         uint64_t *wlo, uint64_t *whi)
{
    uint64_t ps = e->cfg.page_size, rlo = r->offset / ps, rhi = (r->offset + r->size) / ps;
    if (unit >= e->seq_lo && unit < e->seq_hi) {
        if (e->win_units < e->max_units) {
            e->win_units *= 2;
            STAT_ADD(e, window_grows, 1);
        }
    } else {
        e->win_units = e->min_units;
    }
    uint64_t base = unit - unit % e->min_units;
    *wlo = base > rlo ? base : rlo;
    *whi = base + e->win_units < rhi ? base + e->win_units : rhi;
    e->seq_lo = *whi;
    e->seq_hi = *whi + e->min_units;
}

int wr_serve_fault(struct wr_engine *e, uint64_t addr)
{
    const struct wr_region *r = region_of_addr(e, addr);
    if (r == NULL)
        return -EFAULT;
    uint64_t ps = e->cfg.page_size;
    uint64_t off = r->offset + ((addr - r->base) & ~(ps - 1));
    uint64_t unit = off / ps, done = 0;
    if (e->state[unit] == ST_PRESENT) {
        wake_unit(e, r, unit);
        return 0;
    }
    if (e->state[unit] == ST_REMOVED) { /* zeros, and only this unit: it was given back */
        STAT_ADD(e, removed_faults, 1);
        return install_run(e, r, unit, 1, NULL, false, &done);
    }
    uint64_t wlo, whi;
    fault_window(e, r, unit, &wlo, &whi);
    /* first the faulting page's run, inside the smallest window */
    uint64_t first = unit - unit % e->min_units + e->min_units, end = unit + 1;
    first = first < whi ? first : whi;
    if (ps == e->base_page) {
        const uint8_t *src;
        end = run_end(e, unit, first, &src);
        int rc = wr_verify_range(e, off, (end - unit) * ps);
        if (rc == 0)
            rc = install_run(e, r, unit, end - unit, src, false, &done);
        if (done)
            record_touch(e, off, (end - unit) * ps);
        if (rc < 0)
            return rc;
    } else {
        int rc = install_span(e, r, unit, end, false, true, &done);
        if (rc < 0)
            return rc;
    }
    /* then the rest of the window, after the fault and before it */
    int rc = install_range(e, r, end, whi, false, true, &done);
    if (rc == 0)
        rc = install_range(e, r, wlo, unit, false, true, &done);
    if (rc == -EAGAIN) /* a REMOVE is pending: the faulting page is in, leave the rest */
        rc = 0;
    if (rc == 0)
        rc = wr_prefetch_follow(e, off);
    return rc;
}

int wr_install_absent(struct wr_engine *e, uint64_t off, uint64_t end, uint64_t *done_units)
{
    uint64_t ps = e->cfg.page_size, unit = off / ps, last = end / ps;
    *done_units = 0;
    while (unit < last) {
        const struct wr_region *r = wr_region_of_offset(e, unit * ps);
        if (r == NULL)
            return -EFAULT;
        uint64_t rhi = (r->offset + r->size) / ps, hi = last < rhi ? last : rhi;
        int rc = install_range(e, r, unit, hi, true, false, done_units);
        if (rc < 0)
            return rc;
        unit = hi;
    }
    return 0;
}

/* Append one removal record; the kernel has the bytes once write() returns,
 * so they outlive this process (the log is on run_dir, not fsynced: it
 * matters only while the VM runs, which a host reboot ends). */
static void log_removed(struct wr_engine *e, uint64_t offset, uint64_t length)
{
    if (e->remove_log_fd < 0)
        return;
    uint64_t rec[2] = {offset, length};
    ssize_t n;
    do
        n = write(e->remove_log_fd, rec, sizeof rec);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof rec)
        STAT_ADD(e, remove_log_errors, 1);
}

void wr_mark_removed(struct wr_engine *e, uint64_t start, uint64_t end)
{
    uint64_t ps = e->cfg.page_size;
    for (uint32_t i = 0; i < e->nregions; i++) {
        const struct wr_region *r = &e->regions[i];
        uint64_t lo = start > r->base ? start : r->base;
        uint64_t hi = end < r->base + r->size ? end : r->base + r->size;
        if (lo >= hi)
            continue;
        uint64_t first = (r->offset + (lo - r->base)) / ps;
        uint64_t last = (r->offset + (hi - r->base) + ps - 1) / ps;
        mark(e, first, last - first, ST_REMOVED);
        STAT_ADD(e, removed_pages, last - first);
        log_removed(e, first * ps, (last - first) * ps);
    }
}
