/* Installing runs of pages: the engine's hot path.  Every function here runs
 * with e->lock held (fault thread or prefetch thread). */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/userfaultfd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "uffd_engine_int.h"

const struct wr_region *wr_region_of_offset(const struct wr_engine *e, uint64_t off)
{
    for (uint32_t i = 0; i < e->nregions; i++)
        if (off - e->regions[i].offset < e->regions[i].size && off >= e->regions[i].offset)
            return &e->regions[i];
    return NULL;
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

/* A huge unit: assemble its bytes (from one or more entries) in the bounce
 * buffer, which is faulted in, then copy it. */
static int install_mixed(struct wr_engine *e, const struct wr_region *r, uint64_t unit,
                         bool prefetch, uint64_t *done)
{
    uint64_t ps = e->cfg.page_size, pos = unit * ps, end = pos + ps;
    int64_t first = wr_map_lookup(e->entries, e->nentries, pos);
    if (first >= 0 && e->entries[first].source == WR_SOURCE_ZERO &&
        e->entries[first].offset + e->entries[first].length >= end)
        return install_run(e, r, unit, 1, NULL, prefetch, done); /* all zeros */
    while (pos < end) {
        int64_t i = wr_map_lookup(e->entries, e->nentries, pos);
        if (i < 0)
            return -EFAULT;
        const struct wr_map_entry *en = &e->entries[i];
        uint64_t piece = en->offset + en->length - pos;
        if (piece > end - pos)
            piece = end - pos;
        uint8_t *to = e->bounce + (pos - unit * ps);
        if (en->source == WR_SOURCE_ZERO)
            memset(to, 0, piece);
        else
            memcpy(to, e->src_maps[en->source] + en->storage_offset + (pos - en->offset), piece);
        pos += piece;
    }
    return install_run(e, r, unit, 1, e->bounce, prefetch, done);
}

/* Clip the window [wlo, whi) to the units of entry `en`.  False
 * for huge units, which are always assembled in the bounce buffer: hugetlb's
 * UFFDIO_COPY from a source that is not yet faulted in falls back to a
 * temporary huge page and fails with ENOMEM when the pool has none spare. */
static bool entry_span(const struct wr_engine *e, const struct wr_map_entry *en,
                       uint64_t *wlo, uint64_t *whi)
{
    uint64_t ps = e->cfg.page_size;
    if (ps > e->base_page)
        return false;
    uint64_t lo = en->offset / ps, hi = (en->offset + en->length) / ps;
    if (*wlo < lo)
        *wlo = lo;
    if (*whi > hi)
        *whi = hi;
    return true;
}

static const uint8_t *entry_src(const struct wr_engine *e, const struct wr_map_entry *en,
                                uint64_t unit)
{
    if (en->source == WR_SOURCE_ZERO)
        return NULL;
    return e->src_maps[en->source] + en->storage_offset + (unit * e->cfg.page_size - en->offset);
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

int wr_serve_fault(struct wr_engine *e, uint64_t addr)
{
    const struct wr_region *r = region_of_addr(e, addr);
    if (r == NULL)
        return -EFAULT;
    uint64_t ps = e->cfg.page_size;
    uint64_t off = r->offset + ((addr - r->base) & ~(ps - 1));
    uint64_t unit = off / ps;
    uint8_t st = e->state[unit];
    if (st == ST_PRESENT) {
        wake_unit(e, r, unit);
        return 0;
    }
    /* The batch window: aligned to batch_bytes, inside the region. */
    uint64_t bunits = e->cfg.batch_bytes / ps;
    uint64_t wlo = unit - unit % bunits, whi = wlo + bunits;
    uint64_t rlo = r->offset / ps, rhi = (r->offset + r->size) / ps;
    wlo = wlo < rlo ? rlo : wlo;
    whi = whi > rhi ? rhi : whi;
    const struct wr_map_entry *en = NULL;
    uint64_t done = 0;
    if (st == ST_REMOVED) {
        STAT_ADD(e, removed_faults, 1);
    } else {
        int64_t i = wr_map_lookup(e->entries, e->nentries, off);
        if (i < 0)
            return -EFAULT;
        en = &e->entries[i];
        if (!entry_span(e, en, &wlo, &whi)) {
            int rc = install_mixed(e, r, unit, false, &done);
            if (done)
                record_touch(e, off, ps);
            return rc;
        }
    }
    uint64_t lo = unit, hi = unit + 1;
    while (lo > wlo && e->state[lo - 1] == st)
        lo--;
    while (hi < whi && e->state[hi] == st)
        hi++;
    int rc = install_run(e, r, lo, hi - lo, en ? entry_src(e, en, lo) : NULL, false, &done);
    if (done && st == ST_ABSENT)
        record_touch(e, lo * ps, done * ps);
    if (rc == 0 && st == ST_ABSENT)
        rc = wr_prefetch_follow(e, off);
    return rc;
}

int wr_install_absent(struct wr_engine *e, uint64_t off, uint64_t end, uint64_t *done_units)
{
    uint64_t ps = e->cfg.page_size, unit = off / ps, last = end / ps;
    *done_units = 0;
    while (unit < last) {
        if (e->state[unit] != ST_ABSENT) {
            unit++;
            continue;
        }
        const struct wr_region *r = wr_region_of_offset(e, unit * ps);
        int64_t i = wr_map_lookup(e->entries, e->nentries, unit * ps);
        if (r == NULL || i < 0)
            return -EFAULT;
        const struct wr_map_entry *en = &e->entries[i];
        uint64_t rhi = (r->offset + r->size) / ps;
        uint64_t lo = unit, hi = last < rhi ? last : rhi, done = 0;
        int rc;
        if (!entry_span(e, en, &lo, &hi)) {
            rc = install_mixed(e, r, unit, true, &done);
            hi = unit + 1;
        } else {
            uint64_t stop = hi;
            hi = unit + 1;
            while (hi < stop && e->state[hi] == ST_ABSENT)
                hi++;
            rc = install_run(e, r, unit, hi - unit, entry_src(e, en, unit), true, &done);
        }
        *done_units += done;
        if (rc < 0)
            return rc;
        unit = hi;
    }
    return 0;
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
    }
}
