/* The native UFFD engine (DESIGN.md §5): serves a Firecracker's guest page
 * faults from a snapshot's generation files, in batches, on its own threads.
 * See zeroscan.h for the CDEF rules.  Functions return 0 or a negative errno.
 *
 * Life cycle: wr_engine_create (maps the generation files read-only, checks
 * the mapping: done before the VMM is told to load, so a bad snapshot fails
 * early), optionally wr_engine_set_prefetch, wr_engine_start (takes the uffd
 * and the handshake's regions, starts the fault thread, plus the prefetch
 * thread when a prefetch map is set), then wr_engine_stats / wr_engine_working_set at any time,
 * wr_engine_stop (joins the threads) and wr_engine_destroy (unmaps, closes).
 *
 * Memory offsets are positions in the flat guest memory file: the handshake
 * regions map host addresses to them, the mapping entries map them to
 * generation files.
 */
#ifndef WRENND_UFFD_ENGINE_H
#define WRENND_UFFD_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "mapping.h"

/* CDEF-BEGIN */

#define WR_LAT_BUCKETS 40

/* One handshake region: host [base, base+size) is memory [offset, offset+size). */
struct wr_region {
    uint64_t base;
    uint64_t size;
    uint64_t offset;
};

/* A memory range [offset, offset+length): prefetch maps and working sets. */
struct wr_range {
    uint64_t offset;
    uint64_t length;
};

struct wr_engine_config {
    uint64_t memory_size;          /* == sum of region sizes == mapping end */
    uint64_t page_size;            /* install unit: the base page or 2 MiB */
    uint64_t batch_bytes;          /* the smallest fault window; the faulting page's first step */
    uint64_t prefetch_batch_bytes; /* largest run installed per prefetch step */
    uint64_t window_max_bytes;     /* the window grows up to this for sequential faults
                                      (below batch_bytes: no growth) */
    uint32_t copy_mode;            /* WR_COPY_AUTO, or a forced strategy (measurements) */
    uint32_t reserved;             /* 0 */
};

/* How the rest of a fault window is installed: one ioctl per run of one kind
 * (COPY from the generation file, ZEROPAGE), or assembled in a bounce buffer
 * for one UFFDIO_COPY per span of absent pages.  AUTO picks per span by its
 * number of runs (uffd_install.c says why). */
#define WR_COPY_AUTO 0
#define WR_COPY_RUNS 1
#define WR_COPY_BOUNCE 2

/* wr_engine_ranges: which units to list. */
#define WR_RANGES_PRESENT 1 /* installed and not given back since */
#define WR_RANGES_REMOVED 2 /* given back by UFFD_EVENT_REMOVE and not faulted again */

struct wr_engine_stats {
    uint64_t faults;         /* page-fault messages handled */
    uint64_t copy_pages;     /* pages installed by UFFDIO_COPY (demand + prefetch) */
    uint64_t copy_bytes;
    uint64_t zero_pages;     /* pages installed as zeros */
    uint64_t zero_bytes;
    uint64_t batches;        /* install ioctls that installed something */
    uint64_t prefetch_pages; /* pages installed from the prefetch map (thread or readahead) */
    uint64_t prefetch_batches;
    uint64_t prefetch_yields; /* times prefetch waited for demand faults */
    uint64_t eexist;
    uint64_t eagain;
    uint64_t removes;        /* UFFD_EVENT_REMOVE messages */
    uint64_t removed_pages;  /* pages marked removed by them */
    uint64_t removed_faults; /* faults on removed pages (served zeros) */
    uint64_t wakes;          /* UFFDIO_WAKE for faults on present pages */
    uint64_t bounce_batches; /* install ioctls from an assembled bounce buffer */
    uint64_t window_grows;   /* faults that found a sequential stream and grew the window */
    uint64_t lat_count;      /* fault service time: read -> installed */
    uint64_t lat_sum_ns;
    uint64_t lat_max_ns;
    uint64_t lat_hist[40];   /* bucket i counts times in [2^i, 2^(i+1)) ns */
    int32_t running;         /* fault thread alive */
    int32_t prefetch_running;
    int32_t stop_error;      /* 0, or the negative errno that stopped the engine */
    int32_t prefetch_error;  /* 0, or the negative errno that ended prefetch */
    uint64_t verified_blocks; /* blocks checked against their CRC32C before install */
    /* The first block whose bytes did not match its checksum (it was not
     * installed; the engine stopped with -EBADMSG): generation `corrupt_source`
     * (-1: none) at storage offset `corrupt_offset`. */
    int32_t corrupt_source;
    uint32_t reserved;
    uint64_t corrupt_offset;
    uint64_t remove_log_errors; /* REMOVE records the removal log could not take */
};

struct wr_engine;

/* Build an engine.  `source_fds[i]` is generation file i (source index i in
 * the entries); the engine maps each read-only and does not keep the fd.
 * Entries must be sorted, contiguous, cover [0, memory_size), be aligned to
 * the base page size, and fit in their source file (else -ERANGE). */
int wr_engine_create(const struct wr_engine_config *cfg, const struct wr_map_entry *entries,
                     uint64_t nentries, const int *source_fds, uint32_t nsources,
                     struct wr_engine **out);

/* Verify generation `source` before installing its bytes (before
 * wr_engine_start): `fd` holds, at byte `array_offset`, `count` little-endian
 * CRC32C values, one per `block_size` bytes of the generation file (block
 * size a power of two dividing the base page; count covering the file).  The
 * engine maps the fd read-only and does not keep it.  Every block is checked
 * as it is installed, by demand faults and prefetch alike; a mismatch
 * installs nothing of it, records the block (stats corrupt_*) and stops the
 * engine with -EBADMSG: bad memory is never served.  Sources without
 * checksums are installed unchecked.  0, -EINVAL, -EBUSY or -errno. */
int wr_engine_set_checksums(struct wr_engine *e, uint32_t source, int fd, uint64_t array_offset,
                            uint64_t count, uint64_t block_size);

/* Ranges to install in the background, in order (before wr_engine_start). */
int wr_engine_set_prefetch(struct wr_engine *e, const struct wr_range *ranges, uint64_t n);

/* The removal log (before wr_engine_start): every UFFD_EVENT_REMOVE is
 * appended to `fd` as it is read, one record per region piece: two u64 in
 * host byte order, the memory offset and length of the units it marks
 * removed.  The engine keeps a dup of `fd` (O_APPEND expected); a failed
 * write counts in stats.remove_log_errors.  A later engine serving the same
 * VM marks those ranges again (wr_engine_mark_removed), so a page the guest
 * gave back is never installed from the snapshot.  0, -EBUSY or -errno. */
int wr_engine_set_remove_log(struct wr_engine *e, int fd);

/* Mark memory ranges removed (before wr_engine_start): each unit they touch
 * comes back as zeros when it faults, and no window or prefetch installs it.
 * 0, -EBUSY, or -EINVAL for a range outside memory. */
int wr_engine_mark_removed(struct wr_engine *e, const struct wr_range *ranges, uint64_t n);

/* At most `bytes_per_s` bytes per second installed by the prefetch thread
 * (0: no limit; before wr_engine_start): the background fill's share of the
 * host's CPU and I/O.  Demand faults are never limited.  0 or -EBUSY. */
int wr_engine_set_prefetch_rate(struct wr_engine *e, uint64_t bytes_per_s);

/* Start serving `uffd` for the handshake's regions, which must be
 * page-aligned, contiguous in offset from 0 and sum to memory_size.  On
 * success the engine owns the fd (closed by wr_engine_destroy); on failure
 * the caller keeps it. */
int wr_engine_start(struct wr_engine *e, int uffd, const struct wr_region *regions,
                    uint32_t nregions);

/* An eventfd that becomes readable when the fault thread has ended (stop
 * requested, the VMM gone, or an error: see stats.stop_error). */
int wr_engine_done_fd(const struct wr_engine *e);

void wr_engine_stats(const struct wr_engine *e, struct wr_engine_stats *out);

/* The working-set record: ranges installed by demand faults, in first-touch
 * order (adjacent runs merged).  Copies up to `cap` ranges into `out`;
 * returns the total count. */
uint64_t wr_engine_working_set(struct wr_engine *e, struct wr_range *out, uint64_t cap);

/* The memory ranges (offset order, adjacent units merged) whose units are in
 * the state `which` (WR_RANGES_*) right now.  Copies up to `cap` ranges into
 * `out`; returns the total count, or -EINVAL for an unknown `which`. */
int64_t wr_engine_ranges(struct wr_engine *e, int which, struct wr_range *out, uint64_t cap);

/* Stop and join both threads; idempotent. */
int wr_engine_stop(struct wr_engine *e);

/* Stop, unmap the sources, close the uffd and the eventfds, free. */
void wr_engine_destroy(struct wr_engine *e);

/* CDEF-END */

#endif
