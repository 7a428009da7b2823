/* Native tests of the mapping lookup; `make sanitize` runs them under ASan+UBSan. */
#include "../mapping.h"
#include "check.h"

#include <errno.h>
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
    uint64_t probe[3] = {0, off - 1, off};
    int64_t got[3];
    wr_map_lookup_batch(e, N, probe, 3, got);
    CHECK(got[0] == 0 && got[1] == N - 1 && got[2] == -1);
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

#define BS 4096u
#define E(o, l, s, src) ((struct wr_map_entry){.offset = (o) * BS, .length = (l) * BS, \
                                               .storage_offset = (s) * BS, .source = (src)})
#define Z WR_SOURCE_ZERO

static int validate(const struct wr_map_entry *e, uint64_t n, uint64_t mem_blocks,
                    uint64_t *where)
{
    return wr_map_validate(e, n, mem_blocks * BS, BS, 2, where);
}

static void test_validate_each_invariant(void)
{
    uint64_t w = 99;
    struct wr_map_entry ok[3] = {E(0, 2, 0, 0), E(2, 1, 0, Z), E(3, 5, 7, 1)};
    CHECK_EQ(validate(ok, 3, 8, &w), WR_MAP_OK);
    CHECK_EQ(validate(ok, 0, 8, &w), WR_MAP_NO_ENTRIES);
    CHECK_EQ(wr_map_validate(ok, 3, 8 * BS, 0, 2, &w), WR_MAP_MISALIGNED);

    struct wr_map_entry e[3];
#define CASE(idx, field, value, code, at)                 \
    do {                                                  \
        for (int c = 0; c < 3; c++)                       \
            e[c] = ok[c];                                 \
        e[idx].field = (value);                           \
        CHECK_EQ(validate(e, 3, 8, &w), (code));          \
        CHECK_EQ(w, (at));                                \
    } while (0)
    CASE(1, length, 0, WR_MAP_EMPTY, 1);
    CASE(2, offset, 3 * BS + 1, WR_MAP_MISALIGNED, 2);
    CASE(2, storage_offset, 1, WR_MAP_MISALIGNED, 2);
    CASE(0, length, BS + 512, WR_MAP_MISALIGNED, 0);
    CASE(2, offset, 0, WR_MAP_UNSORTED, 2);
    CASE(2, offset, 2 * BS, WR_MAP_OVERLAP, 2);
    CASE(2, offset, 4 * BS, WR_MAP_GAP, 2);
    CASE(0, offset, BS, WR_MAP_GAP, 0);
    CASE(2, length, 4 * BS, WR_MAP_GAP, 3);
    CASE(2, length, 6 * BS, WR_MAP_PAST_END, 2);
    CASE(2, length, UINT64_MAX - BS + 1, WR_MAP_PAST_END, 2);
    CASE(2, source, 2, WR_MAP_BAD_SOURCE, 2);
    CASE(1, storage_offset, BS, WR_MAP_BAD_ZERO, 1);
    CASE(0, reserved, 1, WR_MAP_BAD_ZERO, 0);
    CASE(2, storage_offset, UINT64_MAX - BS + 1, WR_MAP_STORAGE_OVERFLOW, 2);
#undef CASE
}

/* Reference model: per block, (source, storage block) or zero. */
enum { MB = 64 };
struct cell {
    uint32_t source;
    uint64_t storage;
};

static void expand(const struct wr_map_entry *e, uint64_t n, struct cell *cells)
{
    for (uint64_t i = 0; i < n; i++)
        for (uint64_t b = 0; b < e[i].length / BS; b++) {
            struct cell *c = &cells[e[i].offset / BS + b];
            c->source = e[i].source;
            c->storage = e[i].source == Z ? 0 : e[i].storage_offset / BS + b;
        }
}

static uint32_t rng_state = 2463534242u;
static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state % n;
}

/* A random valid mapping of MB blocks over sources 0..2. */
static uint64_t random_mapping(struct wr_map_entry *e)
{
    uint64_t n = 0, off = 0;
    while (off < MB) {
        uint64_t len = 1 + rnd(6);
        if (off + len > MB)
            len = MB - off;
        uint32_t src = rnd(4) == 3 ? Z : rnd(3);
        e[n++] = E(off, len, src == Z ? 0 : rnd(100), src);
        off += len;
    }
    return n;
}

static void test_overlay_matches_model(void)
{
    for (int round = 0; round < 500; round++) {
        struct wr_map_entry parent[MB], top[MB], out[3 * MB];
        uint64_t np = random_mapping(parent), nt = 0;
        for (uint64_t off = rnd(4); off < MB;) {
            uint64_t len = 1 + rnd(4);
            if (off + len > MB)
                len = MB - off;
            uint32_t src = rnd(3) == 0 ? Z : 3;
            top[nt++] = E(off, len, src == Z ? 0 : off, src);
            off += len + rnd(5);
        }
        struct cell want[MB], got[MB];
        expand(parent, np, want);
        expand(top, nt, want);
        int64_t k = wr_map_overlay(parent, np, top, nt, out, np + 2 * nt);
        CHECK(k > 0);
        if (k <= 0)
            continue;
        uint64_t where;
        CHECK_EQ(wr_map_validate(out, (uint64_t)k, MB * BS, BS, 4, &where), WR_MAP_OK);
        expand(out, (uint64_t)k, got);
        uint64_t before = (uint64_t)k;
        uint64_t m = wr_map_normalize(out, (uint64_t)k);
        CHECK(m <= before);
        CHECK_EQ(wr_map_validate(out, m, MB * BS, BS, 4, &where), WR_MAP_OK);
        for (uint64_t i = 1; i < m; i++) /* nothing mergeable is left */
            CHECK(!(out[i].source == out[i - 1].source &&
                    (out[i].source == Z ||
                     out[i - 1].storage_offset + out[i - 1].length == out[i].storage_offset)));
        struct cell norm[MB];
        expand(out, m, norm);
        for (int b = 0; b < MB; b++) {
            CHECK(got[b].source == want[b].source && got[b].storage == want[b].storage);
            CHECK(norm[b].source == want[b].source && norm[b].storage == want[b].storage);
        }
    }
}

static void test_overlay_rejects_bad_top_and_small_cap(void)
{
    struct wr_map_entry parent[2] = {E(0, 4, 0, 0), E(4, 4, 0, Z)}, out[8];
    struct wr_map_entry unsorted[2] = {E(4, 1, 4, 1), E(2, 1, 2, 1)};
    struct wr_map_entry overlap[2] = {E(2, 2, 2, 1), E(3, 1, 3, 1)};
    struct wr_map_entry past[1] = {E(7, 2, 7, 1)};
    struct wr_map_entry empty[1] = {E(1, 0, 1, 1)};
    CHECK_EQ(wr_map_overlay(parent, 2, unsorted, 2, out, 8), -EINVAL);
    CHECK_EQ(wr_map_overlay(parent, 2, overlap, 2, out, 8), -EINVAL);
    CHECK_EQ(wr_map_overlay(parent, 2, past, 1, out, 8), -EINVAL);
    CHECK_EQ(wr_map_overlay(parent, 2, empty, 1, out, 8), -EINVAL);
    struct wr_map_entry mid[1] = {E(1, 1, 1, 1)};
    CHECK_EQ(wr_map_overlay(parent, 2, mid, 1, out, 3), -ENOSPC);
    CHECK_EQ(wr_map_overlay(parent, 2, mid, 1, out, 4), 4);
    CHECK_EQ(out[2].storage_offset, 2 * BS); /* the cut parent keeps its storage */
    CHECK_EQ(wr_map_overlay(parent, 2, NULL, 0, out, 8), 2);
}

static void test_normalize_needs_contiguous_storage(void)
{
    struct wr_map_entry e[5] = {E(0, 1, 0, 0), E(1, 1, 1, 0), E(2, 1, 5, 0), E(3, 1, 0, Z),
                                E(4, 2, 0, Z)};
    CHECK_EQ(wr_map_normalize(e, 5), 3);
    CHECK_EQ(e[0].length, 2 * BS);
    CHECK_EQ(e[1].storage_offset, 5 * BS);
    CHECK_EQ(e[2].length, 3 * BS);
    CHECK_EQ(wr_map_normalize(e, 0), 0);
}

static void test_from_runs(void)
{
    struct wr_run runs[4] = {{.offset = 0, .length = BS},
                             {.offset = BS, .length = 2 * BS},
                             {.offset = 3 * BS, .length = BS, .zero = 1},
                             {.offset = 8 * BS, .length = BS}};
    struct wr_map_entry out[4];
    CHECK_EQ(wr_map_from_runs(runs, 4, 7, out), 3);
    CHECK(out[0].offset == 0 && out[0].length == 3 * BS && out[0].source == 7);
    CHECK(out[1].source == Z && out[1].storage_offset == 0);
    CHECK(out[2].storage_offset == 8 * BS && out[2].source == 7);
    runs[3].offset = 2 * BS;
    CHECK_EQ(wr_map_from_runs(runs, 4, 7, out), -EINVAL);
    runs[3].offset = 8 * BS;
    runs[1].length = 0;
    CHECK_EQ(wr_map_from_runs(runs, 4, 7, out), -EINVAL);
}

static void test_flatten(void)
{
    struct wr_map_entry e[5] = {E(0, 2, 9, 2), E(2, 1, 0, 1), E(3, 1, 0, Z), E(4, 2, 0, Z),
                                E(6, 2, 3, 0)};
    CHECK_EQ(wr_map_flatten(e, 5), 3);
    CHECK(e[0].offset == 0 && e[0].length == 3 * BS && e[0].source == 0 &&
          e[0].storage_offset == 0);
    CHECK(e[1].source == Z && e[1].length == 3 * BS);
    CHECK(e[2].source == 0 && e[2].storage_offset == 6 * BS);
}

static void test_stats_and_remap(void)
{
    struct wr_map_entry e[4] = {E(0, 2, 4, 0), E(2, 1, 0, Z), E(3, 3, 3, 2), E(6, 1, 1, 0)};
    uint64_t bytes[4], ends[3];
    CHECK_EQ(wr_map_source_stats(e, 4, 3, bytes, ends), 0);
    CHECK(bytes[0] == 3 * BS && bytes[1] == 0 && bytes[2] == 3 * BS && bytes[3] == BS);
    CHECK(ends[0] == 6 * BS && ends[1] == 0 && ends[2] == 6 * BS);
    CHECK_EQ(wr_map_source_stats(e, 4, 2, bytes, ends), -EINVAL);
    uint32_t remap[3] = {1, 9, 0};
    CHECK_EQ(wr_map_remap_sources(e, 4, remap, 3), 0);
    CHECK(e[0].source == 1 && e[1].source == Z && e[2].source == 0 && e[3].source == 1);
    uint32_t bad[2] = {0, Z};
    CHECK_EQ(wr_map_remap_sources(e, 4, bad, 2), -EINVAL);
    CHECK_EQ(e[0].source, 1);
}

int main(void)
{
    test_lookup_every_offset();
    test_gap_is_not_found();
    test_validate_each_invariant();
    test_overlay_matches_model();
    test_overlay_rejects_bad_top_and_small_cap();
    test_normalize_needs_contiguous_storage();
    test_from_runs();
    test_stats_and_remap();
    test_flatten();
    return check_report("test_mapping");
}
