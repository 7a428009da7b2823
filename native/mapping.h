/* Snapshot memory mapping: which generation file (source) holds each byte of
 * guest memory (DESIGN.md §4).  See zeroscan.h for the CDEF rules.
 *
 * A mapping is an array of entries sorted by offset, contiguous, covering
 * [0, memory size).  Entry i maps guest-memory bytes [offset, offset+length)
 * to bytes [storage_offset, storage_offset+length) of generation `source`,
 * or to zeros when source == WR_SOURCE_ZERO.
 */
#ifndef WRENND_MAPPING_H
#define WRENND_MAPPING_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */

#define WR_SOURCE_ZERO 0xFFFF

struct wr_map_entry {
    uint64_t offset;
    uint64_t length;
    uint64_t storage_offset;
    uint32_t source;
    uint32_t reserved; /* keeps the struct 32 bytes, always 0 */
};

/* Index of the entry containing memory offset `off` (binary search,
 * O(log n)), or -1 when off lies outside every entry. */
int64_t wr_map_lookup(const struct wr_map_entry *entries, uint64_t n,
                      uint64_t off);

/* wr_map_lookup for each of offsets[0..count): out[i] = entry index or -1.
 * One C call for many lookups (prefetch map resolution, benchmarks). */
void wr_map_lookup_batch(const struct wr_map_entry *entries, uint64_t n,
                         const uint64_t *offsets, uint64_t count, int64_t *out);

/* Results of wr_map_validate: which invariant the entry at *where breaks. */
#define WR_MAP_OK 0
#define WR_MAP_NO_ENTRIES 1  /* n == 0 or memory size 0 */
#define WR_MAP_EMPTY 2       /* an entry of length 0 */
#define WR_MAP_MISALIGNED 3  /* offset, length or storage offset not block-aligned */
#define WR_MAP_UNSORTED 4    /* starts before the previous entry */
#define WR_MAP_OVERLAP 5     /* starts inside the previous entry */
#define WR_MAP_GAP 6         /* starts after the previous entry's end (or != 0 for
                                the first; *where == n: ends before memory size) */
#define WR_MAP_PAST_END 7    /* runs past the memory size (or overflows) */
#define WR_MAP_BAD_SOURCE 8  /* source neither < nsources nor WR_SOURCE_ZERO */
#define WR_MAP_BAD_ZERO 9    /* zero-fill entry with a storage offset, or reserved != 0 */
#define WR_MAP_STORAGE_OVERFLOW 10 /* storage_offset + length overflows */

/* Check that entries[0..n) is a canonical mapping of [0, memory_size):
 * sorted, contiguous, non-empty, block-aligned, within memory, each source
 * either < nsources or WR_SOURCE_ZERO (zero-fill entries have storage_offset
 * 0), reserved fields 0.  Returns WR_MAP_OK or the first broken invariant with
 * the index of the offending entry in *where. */
int wr_map_validate(const struct wr_map_entry *entries, uint64_t n,
                    uint64_t memory_size, uint64_t block_size,
                    uint32_t nsources, uint64_t *where);

/* Overlay `top` (sorted, non-overlapping, non-empty entries, not necessarily
 * contiguous, all inside the parent's range) on the valid mapping `parent`:
 * the result maps every byte covered by `top` as `top` does and every other
 * byte as `parent` does.  Parent entries cut by `top` keep their storage
 * (the storage offset advances with the cut).  Writes at most np + 2*nt
 * entries to `out` (which must not alias the inputs).  Returns the count,
 * -EINVAL when top breaks its rules, -ENOSPC when cap is too small. */
int64_t wr_map_overlay(const struct wr_map_entry *parent, uint64_t np,
                       const struct wr_map_entry *top, uint64_t nt,
                       struct wr_map_entry *out, uint64_t cap);

/* Merge neighbours in place when they are adjacent in memory, have the same
 * source and contiguous storage (zero-fill neighbours always merge).  Returns
 * the new count. */
uint64_t wr_map_normalize(struct wr_map_entry *entries, uint64_t n);

/* A dirty run of memory: [offset, offset + length), all-zero when zero != 0. */
struct wr_run {
    uint64_t offset;
    uint64_t length;
    uint32_t zero;
    uint32_t reserved;
};

/* Map sorted, non-overlapping, non-empty runs: data runs to `source` with
 * storage offset == memory offset (how Firecracker lays out memfiles), zero
 * runs to WR_SOURCE_ZERO; adjacent runs of the same kind merge.  Writes at
 * most n entries.  Returns the count or -EINVAL. */
int64_t wr_map_from_runs(const struct wr_run *runs, uint64_t n, uint32_t source,
                         struct wr_map_entry *out);

/* The mapping of a collapsed chain, in place: every data entry moves to
 * source 0 at storage offset == memory offset (one flat sparse file),
 * zero-fill stays; then neighbours merge.  Returns the new count. */
uint64_t wr_map_flatten(struct wr_map_entry *entries, uint64_t n);

/* Bytes mapped to each source: bytes[s] for s < nsources, bytes[nsources]
 * for zero-fill; ends[s] = the largest storage_offset + length of source s
 * (how long its file must be).  Returns 0 or -EINVAL for a bad source. */
int wr_map_source_stats(const struct wr_map_entry *entries, uint64_t n,
                        uint32_t nsources, uint64_t *bytes, uint64_t *ends);

/* Rewrite every non-zero source s (< nsources) as remap[s].  Returns 0, or
 * -EINVAL (nothing changed) when a source is out of range or maps to a
 * value >= WR_SOURCE_ZERO. */
int wr_map_remap_sources(struct wr_map_entry *entries, uint64_t n,
                         const uint32_t *remap, uint32_t nsources);

/* CDEF-END */

#endif
