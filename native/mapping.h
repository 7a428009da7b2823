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

/* CDEF-END */

#endif
