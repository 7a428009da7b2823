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
