/* Mapping lookup: the fault hot path's first step (DESIGN.md §4). */
#include "mapping.h"

int64_t wr_map_lookup(const struct wr_map_entry *entries, uint64_t n,
                      uint64_t off)
{
    uint64_t lo = 0, hi = n; /* invariant: answer, if any, is in [lo, hi) */
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        const struct wr_map_entry *e = &entries[mid];
        if (off < e->offset)
            hi = mid;
        else if (off - e->offset >= e->length)
            lo = mid + 1;
        else
            return (int64_t)mid;
    }
    return -1;
}

void wr_map_lookup_batch(const struct wr_map_entry *entries, uint64_t n,
                         const uint64_t *offsets, uint64_t count, int64_t *out)
{
    for (uint64_t i = 0; i < count; i++)
        out[i] = wr_map_lookup(entries, n, offsets[i]);
}

/* ---- mapping algebra: validation, overlay, normalization, construction ---- */

#include <errno.h>

int wr_map_validate(const struct wr_map_entry *entries, uint64_t n,
                    uint64_t memory_size, uint64_t block_size,
                    uint32_t nsources, uint64_t *where)
{
    *where = 0;
    if (block_size == 0)
        return WR_MAP_MISALIGNED;
    if (n == 0 || memory_size == 0)
        return WR_MAP_NO_ENTRIES;
    uint64_t expect = 0; /* where the next entry must start */
    for (uint64_t i = 0; i < n; i++) {
        const struct wr_map_entry *e = &entries[i];
        *where = i;
        if (e->length == 0)
            return WR_MAP_EMPTY;
        if (e->offset % block_size || e->length % block_size ||
            e->storage_offset % block_size)
            return WR_MAP_MISALIGNED;
        if (i > 0 && e->offset < entries[i - 1].offset)
            return WR_MAP_UNSORTED;
        if (e->offset < expect)
            return WR_MAP_OVERLAP;
        if (e->offset > expect)
            return WR_MAP_GAP;
        if (e->length > memory_size || e->offset > memory_size - e->length)
            return WR_MAP_PAST_END;
        if (e->source != WR_SOURCE_ZERO && e->source >= nsources)
            return WR_MAP_BAD_SOURCE;
        if (e->reserved != 0 || (e->source == WR_SOURCE_ZERO && e->storage_offset != 0))
            return WR_MAP_BAD_ZERO;
        if (e->storage_offset > UINT64_MAX - e->length)
            return WR_MAP_STORAGE_OVERFLOW;
        expect = e->offset + e->length;
    }
    if (expect != memory_size) {
        *where = n;
        return WR_MAP_GAP;
    }
    return WR_MAP_OK;
}

/* The part [off, off + len) of entry p, which contains it. */
static struct wr_map_entry slice(const struct wr_map_entry *p, uint64_t off,
                                 uint64_t len)
{
    struct wr_map_entry e = *p;
    e.offset = off;
    e.length = len;
    e.storage_offset = p->source == WR_SOURCE_ZERO ? 0 : p->storage_offset + (off - p->offset);
    return e;
}

static int top_is_valid(const struct wr_map_entry *top, uint64_t nt, uint64_t end)
{
    uint64_t prev_end = 0;
    for (uint64_t j = 0; j < nt; j++) {
        if (top[j].length == 0 || top[j].offset < prev_end ||
            top[j].length > end || top[j].offset > end - top[j].length)
            return 0;
        prev_end = top[j].offset + top[j].length;
    }
    return 1;
}

int64_t wr_map_overlay(const struct wr_map_entry *parent, uint64_t np,
                       const struct wr_map_entry *top, uint64_t nt,
                       struct wr_map_entry *out, uint64_t cap)
{
    if (np == 0 || parent[0].offset != 0)
        return -EINVAL;
    const uint64_t end = parent[np - 1].offset + parent[np - 1].length;
    if (!top_is_valid(top, nt, end))
        return -EINVAL;
    uint64_t i = 0, j = 0, k = 0, cur = 0;
    while (cur < end) {
        if (k == cap)
            return -ENOSPC;
        if (j < nt && top[j].offset == cur) {
            out[k++] = top[j];
            cur += top[j].length;
            j++;
            continue;
        }
        while (i < np && parent[i].offset + parent[i].length <= cur)
            i++;
        if (i == np || parent[i].offset > cur)
            return -EINVAL; /* the parent has a gap: not a valid mapping */
        uint64_t stop = parent[i].offset + parent[i].length;
        if (j < nt && top[j].offset < stop)
            stop = top[j].offset;
        out[k++] = slice(&parent[i], cur, stop - cur);
        cur = stop;
    }
    return (int64_t)k;
}

static int mergeable(const struct wr_map_entry *a, const struct wr_map_entry *b)
{
    if (a->source != b->source || a->offset + a->length != b->offset)
        return 0;
    return a->source == WR_SOURCE_ZERO || a->storage_offset + a->length == b->storage_offset;
}

uint64_t wr_map_normalize(struct wr_map_entry *entries, uint64_t n)
{
    if (n == 0)
        return 0;
    uint64_t w = 0;
    for (uint64_t r = 1; r < n; r++) {
        if (mergeable(&entries[w], &entries[r]))
            entries[w].length += entries[r].length;
        else
            entries[++w] = entries[r];
    }
    return w + 1;
}

int64_t wr_map_from_runs(const struct wr_run *runs, uint64_t n, uint32_t source,
                         struct wr_map_entry *out)
{
    uint64_t k = 0, prev_end = 0;
    for (uint64_t i = 0; i < n; i++) {
        const struct wr_run *r = &runs[i];
        if (r->length == 0 || r->offset < prev_end || r->offset > UINT64_MAX - r->length)
            return -EINVAL;
        struct wr_map_entry e = {
            .offset = r->offset,
            .length = r->length,
            .storage_offset = r->zero ? 0 : r->offset,
            .source = r->zero ? WR_SOURCE_ZERO : source,
            .reserved = 0,
        };
        if (k > 0 && mergeable(&out[k - 1], &e))
            out[k - 1].length += e.length;
        else
            out[k++] = e;
        prev_end = r->offset + r->length;
    }
    return (int64_t)k;
}

uint64_t wr_map_flatten(struct wr_map_entry *entries, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        if (entries[i].source != WR_SOURCE_ZERO) {
            entries[i].source = 0;
            entries[i].storage_offset = entries[i].offset;
        }
    }
    return wr_map_normalize(entries, n);
}

int wr_map_source_stats(const struct wr_map_entry *entries, uint64_t n,
                        uint32_t nsources, uint64_t *bytes, uint64_t *ends)
{
    for (uint32_t s = 0; s < nsources; s++)
        bytes[s] = ends[s] = 0;
    bytes[nsources] = 0;
    for (uint64_t i = 0; i < n; i++) {
        const struct wr_map_entry *e = &entries[i];
        if (e->source == WR_SOURCE_ZERO) {
            bytes[nsources] += e->length;
            continue;
        }
        if (e->source >= nsources)
            return -EINVAL;
        bytes[e->source] += e->length;
        if (e->storage_offset + e->length > ends[e->source])
            ends[e->source] = e->storage_offset + e->length;
    }
    return 0;
}

int wr_map_remap_sources(struct wr_map_entry *entries, uint64_t n,
                         const uint32_t *remap, uint32_t nsources)
{
    for (uint32_t s = 0; s < nsources; s++)
        if (remap[s] >= WR_SOURCE_ZERO)
            return -EINVAL;
    for (uint64_t i = 0; i < n; i++)
        if (entries[i].source != WR_SOURCE_ZERO && entries[i].source >= nsources)
            return -EINVAL;
    for (uint64_t i = 0; i < n; i++)
        if (entries[i].source != WR_SOURCE_ZERO)
            entries[i].source = remap[entries[i].source];
    return 0;
}
