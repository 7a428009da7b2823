/* Internals shared by the engine's C files (uffd_engine.c, uffd_install.c,
 * uffd_prefetch.c).  Nothing here is exposed to Python. */
#ifndef WRENND_UFFD_ENGINE_INT_H
#define WRENND_UFFD_ENGINE_INT_H

/* CDEF-BEGIN */
/* CDEF-END */

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "uffd_engine.h"

/* Per-unit state.  REMOVED: the VMM discarded the page (UFFD_EVENT_REMOVE);
 * it must come back as zeros, never as snapshot data. */
enum { ST_ABSENT = 0, ST_PRESENT = 1, ST_REMOVED = 2 };

struct stats_atomic {
    _Atomic uint64_t faults, copy_pages, copy_bytes, zero_pages, zero_bytes, batches;
    _Atomic uint64_t prefetch_pages, prefetch_batches, prefetch_yields;
    _Atomic uint64_t eexist, eagain, removes, removed_pages, removed_faults, wakes;
    _Atomic uint64_t bounce_batches, window_grows, verified_blocks, remove_log_errors;
    _Atomic uint64_t lat_count, lat_sum_ns, lat_max_ns;
    _Atomic uint64_t lat_hist[WR_LAT_BUCKETS];
};

#define STAT_ADD(e, field, n) atomic_fetch_add_explicit(&(e)->st.field, (n), memory_order_relaxed)

/* A prefetch range by offset: [offset, end) is prefetch range `index`. */
struct pf_key {
    uint64_t offset, end, index;
};

/* A fault message waiting to be served (deferred ones are retried). */
struct pending_fault {
    uint64_t address;
    uint64_t t_read_ns;
};

struct wr_engine {
    struct wr_engine_config cfg;
    uint64_t base_page;
    struct wr_region *regions;
    uint32_t nregions;
    struct wr_map_entry *entries;
    uint64_t nentries;
    uint8_t **src_maps;
    uint64_t *src_sizes;
    uint32_t nsources;
    /* Per source: its CRC32C array (NULL: unchecked), from the mapping
     * crc_maps[i] of crc_lens[i] bytes; one value per crc_block bytes. */
    const uint32_t **crcs;
    uint8_t **crc_maps;
    uint64_t *crc_lens;
    uint64_t crc_block;
    atomic_int corrupt_source;
    _Atomic uint64_t corrupt_offset;
    /* Huge units only: one unit of zeros (hugetlb has no zeropage). */
    uint8_t *zeros;
    uint64_t zeros_len;
    /* Where windows and huge units are assembled for one UFFDIO_COPY; written
     * once at create so it is faulted in. */
    uint8_t *bounce;
    uint64_t bounce_len;

    /* The adaptive window (fault thread only): its size now in units, and the
     * units a sequential stream's next fault would land in. */
    uint64_t win_units, min_units, max_units;
    uint64_t seq_lo, seq_hi;

    /* Guarded by `lock`: the state map and every install, so a REMOVE read
     * and marked by the fault thread cannot interleave with a prefetch copy
     * decided on the state before it. */
    pthread_mutex_t lock;
    uint8_t *state;
    uint64_t nunits;

    int uffd;
    int remove_log_fd; /* -1: REMOVEs are not logged */
    uint64_t prefetch_rate; /* bytes per second the prefetch thread installs; 0: no limit */
    int ctl_fd;  /* eventfd: stop request */
    int done_fd; /* eventfd: fault thread ended */
    pthread_t fault_thread, prefetch_thread;
    bool fault_started, prefetch_started;
    atomic_bool stopping;
    atomic_int fault_busy; /* the fault thread has events to serve */
    atomic_int running, prefetch_running, stop_error, prefetch_error;

    /* Fault-thread private queue of faults to serve. */
    struct pending_fault *queue;
    uint64_t nqueue, queue_cap;

    struct wr_range *prefetch;
    uint64_t nprefetch;
    struct pf_key *pf_sorted; /* the prefetch ranges sorted by offset */

    pthread_mutex_t ws_lock;
    struct wr_range *ws;
    uint64_t nws, ws_cap;

    struct stats_atomic st;
};

uint64_t wr_now_ns(void);

/* uffd_install.c: runs of units, installed with the lock held. */
const struct wr_region *wr_region_of_offset(const struct wr_engine *e, uint64_t off);
/* Serve one demand fault at host address `addr`: 0, or -EAGAIN (retry after
 * draining events), -ESRCH (VMM gone), -EFAULT (address outside every region). */
int wr_serve_fault(struct wr_engine *e, uint64_t addr);
/* Install every ABSENT unit of memory [off, end) (prefetch): 0 or -errno;
 * *done_units counts what this call installed. */
int wr_install_absent(struct wr_engine *e, uint64_t off, uint64_t end, uint64_t *done_units);
/* Check memory [off, off+len) against its generations' checksums: 0, or
 * -EBADMSG with the first bad block recorded (lock held). */
int wr_verify_range(struct wr_engine *e, uint64_t off, uint64_t len);
/* Mark host range [start, end) removed. */
void wr_mark_removed(struct wr_engine *e, uint64_t start, uint64_t end);

/* uffd_prefetch.c */
void *wr_prefetch_main(void *arg);
int wr_prefetch_sort(struct wr_engine *e);
/* Readahead along the recorded order, from the fault thread (lock held). */
int wr_prefetch_follow(struct wr_engine *e, uint64_t off);

#endif
