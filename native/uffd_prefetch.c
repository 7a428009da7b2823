/* The prefetch thread: installs the snapshot's prefetch map (ranges in
 * first-touch order) in large batches, and gets out of the way of demand
 * faults: before every batch it checks for pending uffd events and for a busy
 * fault thread, and waits until both are clear. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
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

/* One range, batch by batch; EAGAIN (a REMOVE in flight) retries the batch
 * once the fault thread has read it. */
static int prefetch_range(struct wr_engine *e, struct wr_range r)
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
        pos = stop;
    }
    return 0;
}

void *wr_prefetch_main(void *arg)
{
    struct wr_engine *e = arg;
    pthread_setname_np(pthread_self(), "wr-uffd-pf");
    int rc = 0;
    for (uint64_t i = 0; i < e->nprefetch && rc == 0 && !atomic_load(&e->stopping); i++)
        rc = prefetch_range(e, e->prefetch[i]);
    atomic_store(&e->prefetch_error, rc);
    atomic_store(&e->prefetch_running, 0);
    return NULL;
}
