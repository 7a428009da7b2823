/* The prefetch thread: installs the snapshot's prefetch map (ranges in
 * first-touch order) in large batches, and gets out of the way of demand
 * faults: before every batch it checks for pending uffd events and for a busy
 * fault thread, and waits until both are clear.  When the guest outruns it,
 * the fault thread reads ahead along the same order (wr_prefetch_follow). */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <time.h>

#include "uffd_engine_int.h"

static bool demand_pending(struct wr_engine *e)
{
    if (atomic_load(&e->fault_busy))
        return true;
    struct pollfd p = {.fd = e->uffd, .events = POLLIN};
    return poll(&p, 1, 0) > 0 && (p.revents & POLLIN);
}

static void yield_to_faults(struct wr_engine *e)
{
    bool counted = false;
    while (!atomic_load(&e->stopping) && demand_pending(e)) {
        if (!counted) {
            STAT_ADD(e, prefetch_yields, 1);
            counted = true;
        }
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 10000};
        nanosleep(&ts, NULL);
    }
}

/* With a rate set: sleep until `installed` bytes are due since `t0`, in short
 * steps so that a stop is not kept waiting. */
static void keep_rate(struct wr_engine *e, uint64_t t0, uint64_t installed)
{
    if (e->prefetch_rate == 0)
        return;
    uint64_t due = t0 + (uint64_t)((double)installed * 1e9 / (double)e->prefetch_rate);
    for (uint64_t now = wr_now_ns(); now < due && !atomic_load(&e->stopping);
         now = wr_now_ns()) {
        uint64_t left = due - now < 50000000u ? due - now : 50000000u;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)left};
        nanosleep(&ts, NULL);
    }
}

/* One range, batch by batch; EAGAIN (a REMOVE in flight) retries the batch
 * once the fault thread has read it.  *installed: bytes so far (the rate). */
static int prefetch_range(struct wr_engine *e, struct wr_range r, uint64_t t0,
                          uint64_t *installed)
{
    uint64_t ps = e->cfg.page_size;
    uint64_t pos = r.offset - r.offset % ps;
    uint64_t end = (r.offset + r.length + ps - 1) / ps * ps;
    while (pos < end) {
        if (atomic_load(&e->stopping))
            return 0;
        yield_to_faults(e);
        uint64_t stop = pos + e->cfg.prefetch_batch_bytes;
        stop = stop < end ? stop : end;
        uint64_t done = 0;
        pthread_mutex_lock(&e->lock);
        int rc = wr_install_absent(e, pos, stop, &done);
        pthread_mutex_unlock(&e->lock);
        if (rc == -EAGAIN) {
            STAT_ADD(e, eagain, 1);
            struct timespec ts = {.tv_sec = 0, .tv_nsec = 20000};
            nanosleep(&ts, NULL);
            continue;
        }
        if (rc < 0)
            return rc;
        *installed += done * ps;
        keep_rate(e, t0, *installed);
        pos = stop;
    }
    return 0;
}

static int key_cmp(const void *a, const void *b)
{
    const struct pf_key *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

int wr_prefetch_sort(struct wr_engine *e)
{
    free(e->pf_sorted);
    e->pf_sorted = malloc((e->nprefetch ? e->nprefetch : 1) * sizeof *e->pf_sorted);
    if (e->pf_sorted == NULL)
        return -ENOMEM;
    for (uint64_t i = 0; i < e->nprefetch; i++)
        e->pf_sorted[i] = (struct pf_key){.offset = e->prefetch[i].offset,
                                          .end = e->prefetch[i].offset + e->prefetch[i].length,
                                          .index = i};
    qsort(e->pf_sorted, e->nprefetch, sizeof *e->pf_sorted, key_cmp);
    return 0;
}

/* The prefetch range holding memory offset `off`, or -1. */
static int64_t range_of(const struct wr_engine *e, uint64_t off)
{
    uint64_t lo = 0, hi = e->nprefetch; /* last key with offset <= off is below hi */
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (e->pf_sorted[mid].offset <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0 || off >= e->pf_sorted[lo - 1].end)
        return -1;
    return (int64_t)e->pf_sorted[lo - 1].index;
}

/* A demand fault inside prefetch range j while the prefetch thread is still
 * working means the guest has run ahead of it: install what the recorded
 * first-touch order says comes next (one prefetch batch, from the fault on)
 * now, instead of faulting on each of those ranges in turn.  The faulting
 * thread is already awake; this costs only the fault thread's time. */
int wr_prefetch_follow(struct wr_engine *e, uint64_t off)
{
    if (e->nprefetch == 0 || !atomic_load(&e->prefetch_running))
        return 0;
    int64_t j = range_of(e, off);
    if (j < 0)
        return 0;
    uint64_t ps = e->cfg.page_size, budget = e->cfg.prefetch_batch_bytes;
    for (uint64_t i = (uint64_t)j; i < e->nprefetch && budget > 0; i++) {
        struct wr_range r = e->prefetch[i];
        uint64_t lo = (i == (uint64_t)j ? off : r.offset) / ps * ps;
        uint64_t hi = (r.offset + r.length + ps - 1) / ps * ps;
        if (hi > e->cfg.memory_size)
            hi = e->cfg.memory_size;
        if (hi - lo > budget)
            hi = lo + budget;
        uint64_t done = 0;
        int rc = wr_install_absent(e, lo, hi, &done);
        if (rc < 0)
            return rc;
        budget -= hi - lo;
    }
    return 0;
}

void *wr_prefetch_main(void *arg)
{
    struct wr_engine *e = arg;
    pthread_setname_np(pthread_self(), "wr-uffd-pf");
    int rc = 0;
    uint64_t t0 = wr_now_ns(), installed = 0;
    for (uint64_t i = 0; i < e->nprefetch && rc == 0 && !atomic_load(&e->stopping); i++)
        rc = prefetch_range(e, e->prefetch[i], t0, &installed);
    atomic_store(&e->prefetch_error, rc);
    atomic_store(&e->prefetch_running, 0);
    return NULL;
}
