/* Native tests of the engine under ASan+UBSan and under TSan (`make sanitize`):
 * argument checks, then a real uffd served in-process (the engine threads
 * serve, test threads touch, while the prefetch thread installs). */
#define _GNU_SOURCE
#include "../crc32c.h"
#include "../uffd_engine.h"
#include "../sim/uffd_vmm.h"
#include "../uffd_open.h"
#include "check.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/ioctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NPAGES 256

static uint64_t page;

/* A generation file with page i filled with byte (i * 7 + seed). */
static int make_generation(unsigned seed, uint64_t npages)
{
    char path[] = "/tmp/wr-engine-test-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return -1;
    unlink(path);
    uint8_t *buf = malloc(page);
    for (uint64_t i = 0; i < npages; i++) {
        memset(buf, (int)((i * 7 + seed) & 0xFF), page);
        if (pwrite(fd, buf, page, (off_t)(i * page)) != (ssize_t)page)
            return -1;
    }
    free(buf);
    return fd;
}

static void test_create_refuses_bad_input(int fd)
{
    struct wr_engine *e = NULL;
    struct wr_engine_config cfg = {.memory_size = 4 * page, .page_size = page,
                                   .batch_bytes = page};
    struct wr_map_entry ok[1] = {{.offset = 0, .length = 4 * page, .source = 0}};
    struct wr_map_entry gap[2] = {{.offset = 0, .length = page, .source = 0},
                                  {.offset = 2 * page, .length = 2 * page, .source = 0}};
    struct wr_map_entry far[1] = {{.offset = 0, .length = 4 * page,
                                   .storage_offset = (NPAGES - 2) * page, .source = 0}};
    struct wr_map_entry badsrc[1] = {{.offset = 0, .length = 4 * page, .source = 3}};
    CHECK_EQ(wr_engine_create(&cfg, gap, 2, &fd, 1, &e), -EINVAL);
    CHECK_EQ(wr_engine_create(&cfg, far, 1, &fd, 1, &e), -ERANGE);
    CHECK_EQ(wr_engine_create(&cfg, badsrc, 1, &fd, 1, &e), -EINVAL);
    cfg.page_size = 3 * page;
    CHECK_EQ(wr_engine_create(&cfg, ok, 1, &fd, 1, &e), -EINVAL);
    cfg.page_size = page;
    CHECK_EQ(wr_engine_create(&cfg, ok, 1, &fd, 1, &e), 0);
    struct wr_region bad_regions[1] = {{.base = 0x100000, .size = 2 * page, .offset = 0}};
    CHECK_EQ(wr_engine_start(e, -1, bad_regions, 1), -EINVAL);
    struct wr_range too_far = {.offset = 2 * page, .length = 3 * page};
    CHECK_EQ(wr_engine_set_prefetch(e, &too_far, 1), -EINVAL);
    wr_engine_destroy(e);
}

/* Two generations and a zero entry; the second half is prefetched. */
static void test_serve_in_process(int g0, int g1)
{
    uint64_t addr = 0, feats = 0;
    CHECK_EQ(wr_vmm_map(NPAGES * page, page, 0, &addr), 0);
    int uffd = wr_uffd_create(&feats);
    CHECK(uffd >= 0);
    CHECK_EQ(wr_uffd_register(uffd, addr, NPAGES * page, NULL), 0);

    struct wr_map_entry ents[3] = {
        {.offset = 0, .length = 64 * page, .storage_offset = 0, .source = 0},
        {.offset = 64 * page, .length = 64 * page, .source = WR_SOURCE_ZERO},
        {.offset = 128 * page, .length = 128 * page, .storage_offset = 128 * page, .source = 1},
    };
    int fds[2] = {g0, g1};
    struct wr_engine_config cfg = {.memory_size = NPAGES * page, .page_size = page,
                                   .batch_bytes = 16 * page, .prefetch_batch_bytes = 8 * page};
    struct wr_engine *e = NULL;
    CHECK_EQ(wr_engine_create(&cfg, ents, 3, fds, 2, &e), 0);
    struct wr_range pf = {.offset = 192 * page, .length = 64 * page};
    CHECK_EQ(wr_engine_set_prefetch(e, &pf, 1), 0);
    struct wr_region reg = {.base = addr, .size = NPAGES * page, .offset = 0};
    CHECK_EQ(wr_engine_start(e, uffd, &reg, 1), 0);

    const volatile uint8_t *mem = (const volatile uint8_t *)(uintptr_t)addr;
    for (uint64_t i = 0; i < NPAGES; i++) {
        uint8_t want = i < 64 ? (uint8_t)(i * 7 + 1) : i < 128 ? 0 : (uint8_t)(i * 7 + 2);
        CHECK_EQ(mem[i * page + page / 2], want);
    }
    /* REMOVE: the page comes back as zeros */
    CHECK_EQ(wr_vmm_discard(addr + 3 * page, page), 0);
    CHECK_EQ(mem[3 * page], 0);

    struct wr_engine_stats s;
    wr_engine_stats(e, &s);
    CHECK(s.running);
    CHECK_EQ(s.removes, 1);
    struct wr_range ws[64];
    uint64_t n = wr_engine_working_set(e, ws, 64);
    CHECK(n >= 1);
    CHECK_EQ(ws[0].offset, 0);

    CHECK_EQ(wr_engine_stop(e), 0);
    CHECK_EQ(wr_engine_stop(e), 0); /* idempotent */
    struct pollfd p = {.fd = wr_engine_done_fd(e), .events = POLLIN};
    CHECK_EQ(poll(&p, 1, 0), 1);
    /* counters settle after the ioctl that woke the toucher: read them joined */
    wr_engine_stats(e, &s);
    CHECK_EQ(s.running, 0);
    CHECK_EQ(s.stop_error, 0);
    CHECK_EQ(s.removed_faults, 1);
    CHECK_EQ(s.copy_pages + s.zero_pages, NPAGES + 1);
    CHECK_EQ(s.lat_count, s.faults);
    CHECK(s.prefetch_pages <= 64);
    wr_engine_destroy(e); /* closes uffd */
    CHECK_EQ(wr_vmm_unmap(addr, NPAGES * page), 0);
}

/* The removal log and a second engine on the same uffd (the hand-over): a page
 * given back under the first comes back as zeros from the second, never as
 * snapshot data; other pages are the snapshot's. */
static void test_removal_log_hand_over(int g0)
{
    uint64_t addr = 0;
    CHECK_EQ(wr_vmm_map(NPAGES * page, page, 0, &addr), 0);
    int uffd = wr_uffd_create(NULL);
    CHECK(uffd >= 0);
    CHECK_EQ(wr_uffd_register(uffd, addr, NPAGES * page, NULL), 0);
    int kept = dup(uffd); /* what the fd store keeps */
    char path[] = "/tmp/wr-removal-XXXXXX";
    int log = mkstemp(path);
    CHECK(log >= 0 && kept >= 0);
    unlink(path);
    struct wr_map_entry ent = {.offset = 0, .length = NPAGES * page, .source = 0};
    struct wr_engine_config cfg = {.memory_size = NPAGES * page, .page_size = page,
                                   .batch_bytes = page, .prefetch_batch_bytes = 8 * page};
    struct wr_region reg = {.base = addr, .size = NPAGES * page, .offset = 0};
    struct wr_engine *e = NULL;
    CHECK_EQ(wr_engine_create(&cfg, &ent, 1, &g0, 1, &e), 0);
    CHECK_EQ(wr_engine_set_remove_log(e, log), 0);
    CHECK_EQ(wr_engine_start(e, uffd, &reg, 1), 0);
    CHECK_EQ(wr_engine_set_remove_log(e, log), -EBUSY);
    CHECK_EQ(wr_engine_set_prefetch_rate(e, 1), -EBUSY);
    const volatile uint8_t *mem = (const volatile uint8_t *)(uintptr_t)addr;
    CHECK_EQ(mem[5 * page], (uint8_t)(5 * 7 + 1));
    CHECK_EQ(wr_vmm_discard(addr + 5 * page, 2 * page), 0);
    wr_engine_destroy(e); /* the daemon is gone; `kept` holds the uffd */

    uint64_t rec[2] = {0, 0};
    CHECK_EQ(pread(log, rec, sizeof rec, 0), (ssize_t)sizeof rec);
    CHECK_EQ(rec[0], 5 * page);
    CHECK_EQ(rec[1], 2 * page);
    CHECK_EQ(wr_engine_create(&cfg, &ent, 1, &g0, 1, &e), 0);
    struct wr_range outside = {.offset = NPAGES * page, .length = page};
    CHECK_EQ(wr_engine_mark_removed(e, &outside, 1), -EINVAL);
    struct wr_range removed = {.offset = rec[0], .length = rec[1]};
    CHECK_EQ(wr_engine_mark_removed(e, &removed, 1), 0);
    CHECK_EQ(wr_engine_start(e, kept, &reg, 1), 0);
    CHECK_EQ(mem[5 * page], 0);
    CHECK_EQ(mem[6 * page + 1], 0);
    CHECK_EQ(mem[7 * page], (uint8_t)(7 * 7 + 1));
    struct wr_engine_stats s;
    CHECK_EQ(wr_engine_stop(e), 0);
    wr_engine_stats(e, &s);
    CHECK_EQ(s.removed_faults, 2);
    CHECK_EQ(s.remove_log_errors, 0);
    wr_engine_destroy(e);
    close(log);
    CHECK_EQ(wr_vmm_unmap(addr, NPAGES * page), 0);
}

/* A page the kernel has but the state map does not (installed behind the
 * engine's back): the run that covers it meets EEXIST, marks it and goes on. */
static void test_eexist_is_marked_and_skipped(int g0)
{
    uint64_t addr = 0;
    CHECK_EQ(wr_vmm_map(32 * page, page, 0, &addr), 0);
    int uffd = wr_uffd_create(NULL);
    CHECK_EQ(wr_uffd_register(uffd, addr, 32 * page, NULL), 0);
    int other = dup(uffd);
    struct uffdio_zeropage z = {.range = {.start = addr + 5 * page, .len = page}};
    CHECK_EQ(ioctl(other, UFFDIO_ZEROPAGE, &z), 0);
    close(other);
    struct wr_map_entry ent = {.offset = 0, .length = 32 * page, .source = 0};
    struct wr_engine_config cfg = {.memory_size = 32 * page, .page_size = page,
                                   .batch_bytes = 16 * page};
    struct wr_engine *e = NULL;
    CHECK_EQ(wr_engine_create(&cfg, &ent, 1, &g0, 1, &e), 0);
    struct wr_region reg = {.base = addr, .size = 32 * page, .offset = 0};
    CHECK_EQ(wr_engine_start(e, uffd, &reg, 1), 0);
    const volatile uint8_t *mem = (const volatile uint8_t *)(uintptr_t)addr;
    CHECK_EQ(mem[0], 1);              /* page 0 of generation 1: byte 0*7+1 */
    CHECK_EQ(mem[5 * page], 0);       /* the page installed behind our back */
    CHECK_EQ(mem[6 * page], 6 * 7 + 1); /* the rest of the run was installed */
    CHECK_EQ(mem[20 * page], 20 * 7 + 1);
    CHECK_EQ(wr_engine_stop(e), 0);
    struct wr_engine_stats s;
    wr_engine_stats(e, &s);
    CHECK_EQ(s.eexist, 1);
    CHECK_EQ(s.copy_pages, 31);
    CHECK_EQ(s.faults, 2);
    wr_engine_destroy(e);
    CHECK_EQ(wr_vmm_unmap(addr, 32 * page), 0);
}

/* Single-page entries cycling through generation 0, generation 1 and zeros:
 * every window crosses entries.  Each install strategy serves every byte, the
 * window grows for the sequential scan, and the engine lists all memory as
 * present, then the discarded page as removed. */
static void test_window_across_entries(int g0, int g1, uint32_t mode)
{
    uint64_t addr = 0;
    CHECK_EQ(wr_vmm_map(NPAGES * page, page, 0, &addr), 0);
    int uffd = wr_uffd_create(NULL);
    CHECK(uffd >= 0);
    CHECK_EQ(wr_uffd_register(uffd, addr, NPAGES * page, NULL), 0);
    struct wr_map_entry ents[NPAGES];
    for (uint64_t i = 0; i < NPAGES; i++) {
        uint32_t src = i % 3 == 2 ? WR_SOURCE_ZERO : (uint32_t)(i % 3);
        ents[i] = (struct wr_map_entry){.offset = i * page, .length = page,
                                        .storage_offset = src == WR_SOURCE_ZERO ? 0 : i * page,
                                        .source = src};
    }
    int fds[2] = {g0, g1};
    struct wr_engine_config cfg = {.memory_size = NPAGES * page, .page_size = page,
                                   .batch_bytes = 4 * page, .window_max_bytes = 32 * page,
                                   .copy_mode = mode};
    struct wr_engine *e = NULL;
    CHECK_EQ(wr_engine_create(&cfg, ents, NPAGES, fds, 2, &e), 0);
    struct wr_region reg = {.base = addr, .size = NPAGES * page, .offset = 0};
    CHECK_EQ(wr_engine_start(e, uffd, &reg, 1), 0);
    const volatile uint8_t *mem = (const volatile uint8_t *)(uintptr_t)addr;
    for (uint64_t i = 0; i < NPAGES; i++) {
        uint8_t want = i % 3 == 2 ? 0 : (uint8_t)(i * 7 + 1 + i % 3);
        CHECK_EQ(mem[i * page + page - 1], want);
    }
    CHECK_EQ(wr_vmm_discard(addr + 10 * page, page), 0);
    CHECK_EQ(wr_engine_stop(e), 0);
    struct wr_engine_stats s;
    wr_engine_stats(e, &s);
    CHECK_EQ(s.copy_pages + s.zero_pages, NPAGES);
    CHECK_EQ(s.eexist, 0);
    CHECK(s.window_grows > 0);
    CHECK(s.faults < NPAGES / 8);
    CHECK(mode == WR_COPY_RUNS ? s.bounce_batches == 0 : s.bounce_batches > 0);
    struct wr_range r[4];
    CHECK_EQ(wr_engine_ranges(e, WR_RANGES_PRESENT, r, 4), 2);
    CHECK_EQ(r[0].offset, 0);
    CHECK_EQ(r[0].length, 10 * page);
    CHECK_EQ(r[1].offset, 11 * page);
    CHECK_EQ(wr_engine_ranges(e, WR_RANGES_REMOVED, r, 4), 1);
    CHECK_EQ(r[0].offset, 10 * page);
    CHECK_EQ(r[0].length, page);
    CHECK_EQ(wr_engine_ranges(e, 0, r, 4), -EINVAL);
    wr_engine_destroy(e);
    CHECK_EQ(wr_vmm_unmap(addr, NPAGES * page), 0);
}

/* The fault thread and the prefetch thread on one engine at once, sharing the
 * page-state map: two toucher threads fault on the lower half, upward, while
 * prefetch installs the whole memory upward in small batches, a reader thread
 * polls stats and the working set, and the main thread discards every 16th
 * page of the upper half from the top down (REMOVE events racing prefetch
 * copies where prefetch is about to arrive).  Every touched page must hold its
 * snapshot bytes; every discarded page must read back as zeros, never as
 * snapshot data a late prefetch put there.  Under TSan this schedule catches a
 * prefetch that installs without the engine lock (checked by removing it). */
#define RACE_PAGES 8192

struct toucher {
    uint64_t addr, first, step, end;
    uint64_t wrong; /* pages that did not hold their snapshot bytes */
};

static void *touch_pages(void *arg)
{
    struct toucher *t = arg;
    const volatile uint8_t *mem = (const volatile uint8_t *)(uintptr_t)t->addr;
    for (uint64_t i = t->first; i < t->end; i += t->step)
        if (mem[i * page + (i % page)] != (uint8_t)(i * 7 + 3))
            t->wrong++;
    return NULL;
}

struct watcher {
    struct wr_engine *e;
    atomic_bool done;
    uint64_t polls;
};

static void *watch_engine(void *arg)
{
    struct watcher *w = arg;
    struct wr_range ws[16];
    while (!atomic_load(&w->done)) {
        struct wr_engine_stats s;
        wr_engine_stats(w->e, &s);
        wr_engine_working_set(w->e, ws, 16);
        w->polls++;
    }
    return NULL;
}

static void test_fault_and_prefetch_threads_race(void)
{
    int g = make_generation(3, RACE_PAGES);
    CHECK(g >= 0);
    uint64_t size = RACE_PAGES * page, addr = 0;
    CHECK_EQ(wr_vmm_map(size, page, 0, &addr), 0);
    int uffd = wr_uffd_create(NULL);
    CHECK(uffd >= 0);
    CHECK_EQ(wr_uffd_register(uffd, addr, size, NULL), 0);
    struct wr_map_entry ent = {.offset = 0, .length = size, .source = 0};
    struct wr_engine_config cfg = {.memory_size = size, .page_size = page,
                                   .batch_bytes = page, .prefetch_batch_bytes = 2 * page};
    struct wr_engine *e = NULL;
    CHECK_EQ(wr_engine_create(&cfg, &ent, 1, &g, 1, &e), 0);
    close(g); /* the engine keeps its own mapping */
    struct wr_range pf[RACE_PAGES / 64];
    uint64_t npf = RACE_PAGES / 64;
    for (uint64_t i = 0; i < npf; i++) /* bottom up, 64 pages a range */
        pf[i] = (struct wr_range){.offset = i * 64 * page, .length = 64 * page};
    CHECK_EQ(wr_engine_set_prefetch(e, pf, npf), 0);

    /* The touchers start first: their faults wait in the kernel until start. */
    struct toucher tt[2] = {{addr, 0, 2, RACE_PAGES / 2, 0}, {addr, 1, 2, RACE_PAGES / 2, 0}};
    pthread_t th[2], wt;
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_create(&th[i], NULL, touch_pages, &tt[i]), 0);
    struct wr_region reg = {.base = addr, .size = size, .offset = 0};
    CHECK_EQ(wr_engine_start(e, uffd, &reg, 1), 0);
    struct watcher w = {.e = e};
    atomic_init(&w.done, false);
    CHECK_EQ(pthread_create(&wt, NULL, watch_engine, &w), 0);

    /* Discard every 16th page of the upper half while prefetch works on it. */
    for (uint64_t i = RACE_PAGES - 16; i >= RACE_PAGES / 2; i -= 16)
        CHECK_EQ(wr_vmm_discard(addr + i * page, page), 0);
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_join(th[i], NULL), 0);
    CHECK_EQ(tt[0].wrong + tt[1].wrong, 0);

    const volatile uint8_t *mem = (const volatile uint8_t *)(uintptr_t)addr;
    uint64_t wrong = 0;
    for (uint64_t i = RACE_PAGES / 2; i < RACE_PAGES; i++) {
        uint8_t want = i % 16 == 0 ? 0 : (uint8_t)(i * 7 + 3);
        wrong += mem[i * page + page - 1] != want;
    }
    CHECK_EQ(wrong, 0);
    atomic_store(&w.done, true);
    CHECK_EQ(pthread_join(wt, NULL), 0);
    CHECK(w.polls > 0);

    CHECK_EQ(wr_engine_stop(e), 0);
    struct wr_engine_stats s;
    wr_engine_stats(e, &s);
    CHECK_EQ(s.stop_error, 0);
    CHECK_EQ(s.prefetch_error, 0);
    CHECK_EQ(s.removes, RACE_PAGES / 2 / 16);
    CHECK_EQ(s.lat_count, s.faults);
    wr_engine_destroy(e); /* closes uffd */
    CHECK_EQ(wr_vmm_unmap(addr, size), 0);
}

/* A checksum file for generation `g` of n pages (8-byte preamble, then one
 * CRC32C per page), with page `bad` given a wrong value. */
static int make_checksums(int g, uint64_t n, uint64_t bad)
{
    char path[] = "/tmp/wr-engine-crc-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return -1;
    unlink(path);
    uint8_t *buf = malloc(page);
    uint32_t *crcs = calloc(n + 2, sizeof *crcs);
    for (uint64_t i = 0; i < n; i++) {
        if (pread(g, buf, page, (off_t)(i * page)) != (ssize_t)page)
            return -1;
        crcs[i + 2] = wr_crc32c(0, buf, page) ^ (i == bad ? 1u : 0u);
    }
    ssize_t len = (ssize_t)((n + 2) * sizeof *crcs);
    int ok = pwrite(fd, crcs, (size_t)len, 0) == len;
    free(buf);
    free(crcs);
    return ok ? fd : -1;
}

/* Pages are checked against their checksums before they are installed: good
 * ones are served, a bad one (met here by the prefetch thread) is not
 * installed, is reported, and stops the engine with EBADMSG. */
static void test_verify_pages(int g0)
{
    int crc = make_checksums(g0, NPAGES, 20);
    CHECK(crc >= 0);
    struct wr_map_entry ent = {.offset = 0, .length = 32 * page, .source = 0};
    struct wr_engine_config cfg = {.memory_size = 32 * page, .page_size = page,
                                   .batch_bytes = 16 * page, .window_max_bytes = 16 * page};
    for (int round = 0; round < 2; round++) {
        uint64_t addr = 0;
        CHECK_EQ(wr_vmm_map(32 * page, page, 0, &addr), 0);
        int uffd = wr_uffd_create(NULL);
        CHECK_EQ(wr_uffd_register(uffd, addr, 32 * page, NULL), 0);
        struct wr_engine *e = NULL;
        CHECK_EQ(wr_engine_create(&cfg, &ent, 1, &g0, 1, &e), 0);
        CHECK_EQ(wr_engine_set_checksums(e, 0, crc, 8, NPAGES - 1, page), -EINVAL); /* too few */
        CHECK_EQ(wr_engine_set_checksums(e, 1, crc, 8, NPAGES, page), -EINVAL); /* no source 1 */
        CHECK_EQ(wr_engine_set_checksums(e, 0, crc, 8, NPAGES, page), 0);
        struct wr_range pf = {.offset = 16 * page, .length = 16 * page};
        if (round == 1)
            CHECK_EQ(wr_engine_set_prefetch(e, &pf, 1), 0);
        struct wr_region reg = {.base = addr, .size = 32 * page, .offset = 0};
        CHECK_EQ(wr_engine_start(e, uffd, &reg, 1), 0);
        struct wr_engine_stats s;
        if (round == 0) { /* demand faults on good pages: served, verified */
            const volatile uint8_t *mem = (const volatile uint8_t *)(uintptr_t)addr;
            CHECK_EQ(mem[3 * page], 3 * 7 + 1);
            CHECK_EQ(wr_engine_stop(e), 0);
            wr_engine_stats(e, &s);
            CHECK_EQ(s.verified_blocks, 16);
            CHECK_EQ(s.corrupt_source, -1);
            CHECK_EQ(s.stop_error, 0);
        } else { /* prefetch meets page 20 */
            struct pollfd p = {.fd = wr_engine_done_fd(e), .events = POLLIN};
            CHECK_EQ(poll(&p, 1, 10000), 1);
            CHECK_EQ(wr_engine_stop(e), 0);
            wr_engine_stats(e, &s);
            CHECK_EQ(s.stop_error, -EBADMSG);
            CHECK_EQ(s.prefetch_error, -EBADMSG);
            CHECK_EQ(s.corrupt_source, 0);
            CHECK_EQ(s.corrupt_offset, 20 * page);
            struct wr_range present[4];
            int64_t n = wr_engine_ranges(e, WR_RANGES_PRESENT, present, 4);
            for (int64_t i = 0; i < n && i < 4; i++)
                CHECK(present[i].offset + present[i].length <= 20 * page ||
                      present[i].offset > 20 * page);
        }
        wr_engine_destroy(e);
        CHECK_EQ(wr_vmm_unmap(addr, 32 * page), 0);
    }
    close(crc);
}

int main(void)
{
    page = (uint64_t)sysconf(_SC_PAGESIZE);
    int g0 = make_generation(1, NPAGES), g1 = make_generation(2, NPAGES);
    CHECK(g0 >= 0 && g1 >= 0);
    test_create_refuses_bad_input(g0);
    int probe = wr_uffd_create(NULL);
    if (probe >= 0) {
        close(probe);
        test_serve_in_process(g0, g1);
        test_eexist_is_marked_and_skipped(g0);
        test_removal_log_hand_over(g0);
        for (uint32_t mode = WR_COPY_AUTO; mode <= WR_COPY_BOUNCE; mode++)
            test_window_across_entries(g0, g1, mode);
        test_fault_and_prefetch_threads_race();
        test_verify_pages(g0);
    } else {
        printf("test_uffd_engine: userfaultfd unusable (%s): in-process serving skipped\n",
               strerror(-probe));
    }
    close(g0);
    close(g1);
    return check_report("test_uffd_engine");
}
