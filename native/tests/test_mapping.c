/* Native tests of the mapping lookup; `make sanitize` runs them under ASan+UBSan. */
#include "../mapping.h"
#include "check.h"

#include <stdlib.h>

static void test_lookup_every_offset(void)
{
    /* entries of varying length covering [0, total) */
    enum { N = 37 };
    struct wr_map_entry e[N];
    uint64_t off = 0;
    for (int i = 0; i < N; i++) {
        uint64_t len = (uint64_t)(1 + (i * 7919) % 13) * 4096;
        e[i] = (struct wr_map_entry){.offset = off, .length = len,
                                     .storage_offset = off, .source = (uint32_t)(i % 3)};
        off += len;
    }
    for (uint64_t o = 0; o < off; o += 512) {
        int64_t i = wr_map_lookup(e, N, o);
        CHECK(i >= 0);
        if (i >= 0)
            CHECK(e[i].offset <= o && o < e[i].offset + e[i].length);
    }
    CHECK_EQ(wr_map_lookup(e, N, off), -1);
    CHECK_EQ(wr_map_lookup(e, N, UINT64_MAX), -1);
    CHECK_EQ(wr_map_lookup(e, 0, 0), -1);
}

static void test_gap_is_not_found(void)
{
    struct wr_map_entry e[2] = {{.offset = 0, .length = 4096},
                                {.offset = 8192, .length = 4096}};
    CHECK_EQ(wr_map_lookup(e, 2, 4095), 0);
    CHECK_EQ(wr_map_lookup(e, 2, 4096), -1);
    CHECK_EQ(wr_map_lookup(e, 2, 8192), 1);
}

int main(void)
{
    test_lookup_every_offset();
    test_gap_is_not_found();
    return check_report("test_mapping");
}
