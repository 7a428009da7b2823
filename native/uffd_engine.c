/* The engine's life cycle and its fault thread (DESIGN.md §5). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "uffd_engine_int.h"

#define MSGS_PER_READ 64

uint64_t wr_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static bool pow2(uint64_t v)
{
    return v && !(v & (v - 1));
}

static int check_regions(const struct wr_engine_config *c, const struct wr_region *r, uint32_t n)
{
    uint64_t off = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (r[i].offset != off || r[i].size == 0 || r[i].size % c->page_size ||
            r[i].base % c->page_size || r[i].base + r[i].size < r[i].base)
            return -EINVAL;
        off += r[i].size;
    }
    return n && off == c->memory_size ? 0 : -EINVAL;
}

static int check_entries(const struct wr_engine *e, const struct wr_map_entry *en, uint64_t n)
{
    uint64_t off = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (en[i].offset != off || en[i].length == 0 || en[i].length % e->base_page)
            return -EINVAL;
        if (en[i].source != WR_SOURCE_ZERO) {
            if (en[i].source >= e->nsources)
                return -EINVAL;
            uint64_t size = e->src_sizes[en[i].source];
            if (en[i].storage_offset > size || en[i].length > size - en[i].storage_offset)
                return -ERANGE; /* the generation file is too short */
        }
        off += en[i].length;
    }
    return off == e->cfg.memory_size ? 0 : -EINVAL;
}

static int map_sources(struct wr_engine *e, const int *fds)
{
    for (uint32_t i = 0; i < e->nsources; i++) {
        struct stat st;
        if (fstat(fds[i], &st) < 0)
            return -errno;
        e->src_sizes[i] = (uint64_t)st.st_size;
        if (st.st_size == 0)
            continue;
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fds[i], 0);
        if (p == MAP_FAILED)
            return -errno;
        e->src_maps[i] = p;
    }
    return 0;
}

static int alloc_buffers(struct wr_engine *e)
{
    uint64_t ps = e->cfg.page_size;
    /* Room for the largest window (longer prefetch spans go in pieces);
     * written once so the bounce pages are faulted in before the first copy
     * from them (see assemble in uffd_install.c). */
    uint64_t len = e->cfg.window_max_bytes;
    e->bounce_len = len;
    e->zeros_len = ps > e->base_page ? ps : 0;
    void *p = mmap(NULL, len + e->zeros_len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    memset(p, 0, len + e->zeros_len);
    e->bounce = p;
    if (e->zeros_len)
        e->zeros = e->bounce + len;
    e->state = calloc(e->nunits, 1);
    e->ctl_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    e->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (e->state == NULL)
        return -ENOMEM;
    return e->ctl_fd < 0 || e->done_fd < 0 ? -EMFILE : 0;
}

static uint64_t round_batch(uint64_t bytes, uint64_t ps)
{
    return bytes < ps ? ps : bytes - bytes % ps;
}

int wr_engine_create(const struct wr_engine_config *cfg, const struct wr_map_entry *entries,
                     uint64_t nentries, const int *source_fds, uint32_t nsources,
                     struct wr_engine **out)
{
    uint64_t base = (uint64_t)sysconf(_SC_PAGESIZE);
    if (!pow2(cfg->page_size) || cfg->page_size < base || cfg->memory_size == 0 ||
        cfg->memory_size % cfg->page_size || cfg->copy_mode > WR_COPY_BOUNCE)
        return -EINVAL;
    int rc;
    struct wr_engine *e = calloc(1, sizeof *e);
    if (e == NULL)
        return -ENOMEM;
    e->cfg = *cfg;
    e->cfg.batch_bytes = round_batch(cfg->batch_bytes, cfg->page_size);
    e->cfg.prefetch_batch_bytes =
        round_batch(cfg->prefetch_batch_bytes ? cfg->prefetch_batch_bytes : 1 << 20,
                    cfg->page_size);
    /* window sizes are whole powers of two of units, so windows stay aligned */
    uint64_t minu = e->cfg.batch_bytes / cfg->page_size, maxu = minu;
    while (maxu * 2 * cfg->page_size <= cfg->window_max_bytes)
        maxu *= 2;
    e->cfg.window_max_bytes = maxu * cfg->page_size;
    e->min_units = e->win_units = minu;
    e->max_units = maxu;
    e->base_page = base;
    e->nunits = cfg->memory_size / cfg->page_size;
    e->uffd = e->ctl_fd = e->done_fd = e->remove_log_fd = -1;
    e->nentries = nentries;
    e->nsources = nsources;
    pthread_mutex_init(&e->lock, NULL);
    pthread_mutex_init(&e->ws_lock, NULL);
    e->entries = malloc((nentries ? nentries : 1) * sizeof *entries);
    e->src_maps = calloc(nsources ? nsources : 1, sizeof *e->src_maps);
    e->src_sizes = calloc(nsources ? nsources : 1, sizeof *e->src_sizes);
    e->crcs = calloc(nsources ? nsources : 1, sizeof *e->crcs);
    e->crc_maps = calloc(nsources ? nsources : 1, sizeof *e->crc_maps);
    e->crc_lens = calloc(nsources ? nsources : 1, sizeof *e->crc_lens);
    atomic_store(&e->corrupt_source, -1);
    if (!e->entries || !e->src_maps || !e->src_sizes || !e->crcs || !e->crc_maps ||
        !e->crc_lens) {
        rc = -ENOMEM;
        goto fail;
    }
    if (nentries)
        memcpy(e->entries, entries, nentries * sizeof *entries);
    if ((rc = map_sources(e, source_fds)) < 0 || (rc = check_entries(e, entries, nentries)) < 0 ||
        (rc = alloc_buffers(e)) < 0)
        goto fail;
    *out = e;
    return 0;
fail:
    wr_engine_destroy(e);
    return rc;
}

int wr_engine_set_checksums(struct wr_engine *e, uint32_t source, int fd, uint64_t array_offset,
                            uint64_t count, uint64_t block_size)
{
    if (e->fault_started)
        return -EBUSY;
    if (source >= e->nsources || !pow2(block_size) || e->base_page % block_size ||
        (e->crc_block && e->crc_block != block_size) || e->crcs[source] ||
        count < (e->src_sizes[source] + block_size - 1) / block_size || count > UINT64_MAX / 4 ||
        array_offset % sizeof(uint32_t) || array_offset > UINT64_MAX - count * 4)
        return -EINVAL;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    uint64_t len = array_offset + count * 4;
    if ((uint64_t)st.st_size < len || len == 0)
        return -EINVAL;
    void *p = mmap(NULL, (size_t)len, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return -errno;
    e->crc_maps[source] = p;
    e->crc_lens[source] = len;
    e->crcs[source] = (const uint32_t *)((uint8_t *)p + array_offset);
    e->crc_block = block_size;
    return 0;
}

int wr_engine_set_prefetch(struct wr_engine *e, const struct wr_range *ranges, uint64_t n)
{
    if (e->fault_started)
        return -EBUSY;
    struct wr_range *copy = malloc((n ? n : 1) * sizeof *copy);
    if (copy == NULL)
        return -ENOMEM;
    for (uint64_t i = 0; i < n; i++) {
        if (ranges[i].offset > e->cfg.memory_size ||
            ranges[i].length > e->cfg.memory_size - ranges[i].offset) {
            free(copy);
            return -EINVAL;
        }
        copy[i] = ranges[i];
    }
    free(e->prefetch);
    e->prefetch = copy;
    e->nprefetch = n;
    return wr_prefetch_sort(e);
}

int wr_engine_set_remove_log(struct wr_engine *e, int fd)
{
    if (e->fault_started)
        return -EBUSY;
    int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0)
        return -errno;
    if (e->remove_log_fd >= 0)
        close(e->remove_log_fd);
    e->remove_log_fd = dup;
    return 0;
}

int wr_engine_mark_removed(struct wr_engine *e, const struct wr_range *ranges, uint64_t n)
{
    if (e->fault_started)
        return -EBUSY;
    uint64_t ps = e->cfg.page_size;
    for (uint64_t i = 0; i < n; i++)
        if (ranges[i].offset > e->cfg.memory_size ||
            ranges[i].length > e->cfg.memory_size - ranges[i].offset)
            return -EINVAL;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t first = ranges[i].offset / ps;
        uint64_t last = (ranges[i].offset + ranges[i].length + ps - 1) / ps;
        memset(e->state + first, ST_REMOVED, last - first);
    }
    return 0;
}

int wr_engine_set_prefetch_rate(struct wr_engine *e, uint64_t bytes_per_s)
{
    if (e->fault_started)
        return -EBUSY;
    e->prefetch_rate = bytes_per_s;
    return 0;
}

static int queue_push(struct wr_engine *e, uint64_t addr, uint64_t t)
{
    if (e->nqueue == e->queue_cap) {
        uint64_t cap = e->queue_cap ? e->queue_cap * 2 : 64;
        struct pending_fault *q = realloc(e->queue, cap * sizeof *q);
        if (q == NULL)
            return -ENOMEM;
        e->queue = q;
        e->queue_cap = cap;
    }
    e->queue[e->nqueue++] = (struct pending_fault){.address = addr, .t_read_ns = t};
    return 0;
}

/* Read every pending message: REMOVEs are applied at once (before any fault
 * of the same read is served: they may arrive out of causal order), faults
 * are queued.  Returns the number of messages read or -errno. */
static int64_t drain(struct wr_engine *e)
{
    struct uffd_msg msgs[MSGS_PER_READ];
    int64_t total = 0;
    for (;;) {
        ssize_t n = read(e->uffd, msgs, sizeof msgs);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN ? total : -errno;
        }
        uint64_t t = wr_now_ns();
        size_t count = (size_t)n / sizeof msgs[0];
        for (size_t i = 0; i < count; i++) {
            if (msgs[i].event == UFFD_EVENT_PAGEFAULT) {
                STAT_ADD(e, faults, 1);
                if (queue_push(e, msgs[i].arg.pagefault.address, t) < 0)
                    return -ENOMEM;
            } else if (msgs[i].event == UFFD_EVENT_REMOVE) {
                STAT_ADD(e, removes, 1);
                wr_mark_removed(e, msgs[i].arg.remove.start, msgs[i].arg.remove.end);
            }
        }
        total += (int64_t)count;
        if (count < MSGS_PER_READ)
            return total;
    }
}

static void record_latency(struct wr_engine *e, uint64_t ns)
{
    unsigned b = ns ? 63u - (unsigned)__builtin_clzll(ns) : 0;
    STAT_ADD(e, lat_hist[b < WR_LAT_BUCKETS ? b : WR_LAT_BUCKETS - 1], 1);
    STAT_ADD(e, lat_count, 1);
    STAT_ADD(e, lat_sum_ns, ns);
    uint64_t max = atomic_load_explicit(&e->st.lat_max_ns, memory_order_relaxed);
    while (ns > max && !atomic_compare_exchange_weak(&e->st.lat_max_ns, &max, ns))
        ;
}

static void pause_briefly(void)
{
    struct timespec ts = {.tv_sec = 0, .tv_nsec = 20000};
    nanosleep(&ts, NULL);
}

/* Serve the queue in order.  EAGAIN (a REMOVE not read yet) drains the uffd
 * and retries the same fault: Firecracker never re-sends one. */
static int serve_queue(struct wr_engine *e)
{
    uint64_t i = 0;
    while (i < e->nqueue && !atomic_load(&e->stopping)) {
        int rc = wr_serve_fault(e, e->queue[i].address);
        if (rc == -EAGAIN) {
            STAT_ADD(e, eagain, 1);
            int64_t n = drain(e);
            if (n < 0)
                return (int)n;
            if (n == 0)
                pause_briefly(); /* the REMOVE is announced but not queued yet */
            continue;
        }
        if (rc < 0)
            return rc;
        record_latency(e, wr_now_ns() - e->queue[i].t_read_ns);
        i++;
    }
    e->nqueue = 0;
    return 0;
}

static void *fault_main(void *arg)
{
    struct wr_engine *e = arg;
    pthread_setname_np(pthread_self(), "wr-uffd-fault");
    struct pollfd p[2] = {{.fd = e->uffd, .events = POLLIN}, {.fd = e->ctl_fd, .events = POLLIN}};
    int err = 0;
    while (!atomic_load(&e->stopping)) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            err = -errno;
            break;
        }
        if (p[1].revents)
            break;
        if (p[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
            err = -EPIPE;
            break;
        }
        if (!(p[0].revents & POLLIN))
            continue;
        atomic_store(&e->fault_busy, 1);
        pthread_mutex_lock(&e->lock);
        int64_t n = drain(e);
        err = n < 0 ? (int)n : serve_queue(e);
        pthread_mutex_unlock(&e->lock);
        atomic_store(&e->fault_busy, 0);
        if (err)
            break;
    }
    if (err == 0 && atomic_load(&e->corrupt_source) >= 0)
        err = -EBADMSG; /* prefetch met a bad block and asked us to stop */
    atomic_store(&e->stop_error, err);
    atomic_store(&e->stopping, true); /* the prefetch thread follows */
    atomic_store(&e->running, 0);
    uint64_t one = 1;
    if (write(e->done_fd, &one, sizeof one) < 0) {
        /* an eventfd write of 1 cannot fail short of overflow */
    }
    return NULL;
}

/* Engine threads take no signals: they belong to the embedding process's
 * main thread (Python's handlers run there). */
static int spawn(pthread_t *t, void *(*fn)(void *), struct wr_engine *e)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(t, NULL, fn, e);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return -rc;
}

int wr_engine_start(struct wr_engine *e, int uffd, const struct wr_region *regions,
                    uint32_t nregions)
{
    if (e->fault_started || e->regions)
        return -EBUSY;
    int rc = check_regions(&e->cfg, regions, nregions);
    if (rc < 0)
        return rc;
    e->regions = malloc(nregions * sizeof *regions);
    if (e->regions == NULL)
        return -ENOMEM;
    memcpy(e->regions, regions, nregions * sizeof *regions);
    e->nregions = nregions;
    e->uffd = uffd;
    atomic_store(&e->running, 1);
    rc = spawn(&e->fault_thread, fault_main, e);
    if (rc < 0) {
        e->uffd = -1;
        free(e->regions);
        e->regions = NULL;
        e->nregions = 0;
        atomic_store(&e->running, 0);
        return rc;
    }
    e->fault_started = true;
    if (e->nprefetch) {
        atomic_store(&e->prefetch_running, 1);
        if (spawn(&e->prefetch_thread, wr_prefetch_main, e) == 0)
            e->prefetch_started = true;
        else
            atomic_store(&e->prefetch_running, 0);
    }
    return 0;
}

int wr_engine_done_fd(const struct wr_engine *e)
{
    return e->done_fd;
}

void wr_engine_stats(const struct wr_engine *e, struct wr_engine_stats *o)
{
    struct stats_atomic *s = (struct stats_atomic *)&e->st;
#define LOAD(f) o->f = atomic_load_explicit(&s->f, memory_order_relaxed)
    LOAD(faults);
    LOAD(copy_pages);
    LOAD(copy_bytes);
    LOAD(zero_pages);
    LOAD(zero_bytes);
    LOAD(batches);
    LOAD(prefetch_pages);
    LOAD(prefetch_batches);
    LOAD(prefetch_yields);
    LOAD(eexist);
    LOAD(eagain);
    LOAD(removes);
    LOAD(removed_pages);
    LOAD(removed_faults);
    LOAD(wakes);
    LOAD(bounce_batches);
    LOAD(window_grows);
    LOAD(verified_blocks);
    LOAD(remove_log_errors);
    LOAD(lat_count);
    LOAD(lat_sum_ns);
    LOAD(lat_max_ns);
    for (int i = 0; i < WR_LAT_BUCKETS; i++)
        LOAD(lat_hist[i]);
#undef LOAD
    struct wr_engine *m = (struct wr_engine *)e;
    o->running = atomic_load(&m->running);
    o->prefetch_running = atomic_load(&m->prefetch_running);
    o->stop_error = atomic_load(&m->stop_error);
    o->prefetch_error = atomic_load(&m->prefetch_error);
    o->corrupt_source = atomic_load(&m->corrupt_source);
    o->reserved = 0;
    o->corrupt_offset = atomic_load(&m->corrupt_offset);
}

uint64_t wr_engine_working_set(struct wr_engine *e, struct wr_range *out, uint64_t cap)
{
    pthread_mutex_lock(&e->ws_lock);
    uint64_t n = e->nws;
    /* Before the first demand fault e->ws is NULL: memcpy from NULL is UB even for 0 bytes. */
    if (out && cap && n)
        memcpy(out, e->ws, (n < cap ? n : cap) * sizeof *out);
    pthread_mutex_unlock(&e->ws_lock);
    return n;
}

int64_t wr_engine_ranges(struct wr_engine *e, int which, struct wr_range *out, uint64_t cap)
{
    uint8_t want = which == WR_RANGES_PRESENT ? ST_PRESENT : ST_REMOVED;
    if (which != WR_RANGES_PRESENT && which != WR_RANGES_REMOVED)
        return -EINVAL;
    uint64_t ps = e->cfg.page_size, n = 0;
    pthread_mutex_lock(&e->lock);
    for (uint64_t u = 0; u < e->nunits;) {
        if (e->state[u] != want) {
            u++;
            continue;
        }
        uint64_t v = u + 1;
        while (v < e->nunits && e->state[v] == want)
            v++;
        if (n < cap)
            out[n] = (struct wr_range){.offset = u * ps, .length = (v - u) * ps};
        n++;
        u = v;
    }
    pthread_mutex_unlock(&e->lock);
    return (int64_t)n;
}

int wr_engine_stop(struct wr_engine *e)
{
    atomic_store(&e->stopping, true);
    if (e->ctl_fd >= 0) {
        uint64_t one = 1;
        if (write(e->ctl_fd, &one, sizeof one) < 0 && errno != EAGAIN)
            return -errno;
    }
    if (e->fault_started) {
        pthread_join(e->fault_thread, NULL);
        e->fault_started = false;
    }
    if (e->prefetch_started) {
        pthread_join(e->prefetch_thread, NULL);
        e->prefetch_started = false;
    }
    return 0;
}

void wr_engine_destroy(struct wr_engine *e)
{
    if (e == NULL)
        return;
    wr_engine_stop(e);
    for (uint32_t i = 0; e->src_maps && i < e->nsources; i++)
        if (e->src_maps[i])
            munmap(e->src_maps[i], e->src_sizes[i]);
    for (uint32_t i = 0; e->crc_maps && i < e->nsources; i++)
        if (e->crc_maps[i])
            munmap(e->crc_maps[i], e->crc_lens[i]);
    if (e->bounce)
        munmap(e->bounce, e->bounce_len + e->zeros_len);
    int fds[4] = {e->uffd, e->ctl_fd, e->done_fd, e->remove_log_fd};
    for (int i = 0; i < 4; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    pthread_mutex_destroy(&e->lock);
    pthread_mutex_destroy(&e->ws_lock);
    free(e->src_maps);
    free(e->src_sizes);
    free(e->crcs);
    free(e->crc_maps);
    free(e->crc_lens);
    free(e->regions);
    free(e->entries);
    free(e->state);
    free(e->queue);
    free(e->prefetch);
    free(e->pf_sorted);
    free(e->ws);
    free(e);
}
