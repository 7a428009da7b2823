/* The minimal handler: read one message, copy one page, repeat. */
#define _GNU_SOURCE
#include "uffd_minimal.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct wr_minimal {
    int uffd, ctl_fd;
    uint64_t base, size, page_size;
    const uint8_t *src;
    pthread_t thread;
    _Atomic uint64_t faults;
};

static void *minimal_main(void *arg)
{
    struct wr_minimal *m = arg;
    struct pollfd p[2] = {{.fd = m->uffd, .events = POLLIN}, {.fd = m->ctl_fd, .events = POLLIN}};
    for (;;) {
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            break;
        if (p[1].revents)
            break;
        struct uffd_msg msg;
        if (read(m->uffd, &msg, sizeof msg) != (ssize_t)sizeof msg)
            continue;
        if (msg.event != UFFD_EVENT_PAGEFAULT)
            continue;
        uint64_t addr = msg.arg.pagefault.address & ~(m->page_size - 1);
        struct uffdio_copy c = {.dst = addr,
                                .src = (uint64_t)(uintptr_t)(m->src + (addr - m->base)),
                                .len = m->page_size};
        if (ioctl(m->uffd, UFFDIO_COPY, &c) == 0)
            atomic_fetch_add_explicit(&m->faults, 1, memory_order_relaxed);
        else if (errno == ESRCH)
            break;
    }
    return NULL;
}

int wr_minimal_start(int uffd, uint64_t base, uint64_t size, uint64_t page_size, int file_fd,
                     struct wr_minimal **out)
{
    struct stat st;
    if (fstat(file_fd, &st) < 0)
        return -errno;
    if ((uint64_t)st.st_size < size || size == 0)
        return -EINVAL;
    struct wr_minimal *m = calloc(1, sizeof *m);
    if (m == NULL)
        return -ENOMEM;
    *m = (struct wr_minimal){.uffd = uffd, .base = base, .size = size, .page_size = page_size};
    void *src = mmap(NULL, size, PROT_READ, MAP_SHARED, file_fd, 0);
    m->ctl_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int rc = 0;
    if (src == MAP_FAILED || m->ctl_fd < 0) {
        rc = -errno;
    } else {
        m->src = src;
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        rc = -pthread_create(&m->thread, NULL, minimal_main, m);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (rc < 0) {
        if (src != MAP_FAILED)
            munmap(src, size);
        if (m->ctl_fd >= 0)
            close(m->ctl_fd);
        free(m);
        return rc;
    }
    *out = m;
    return 0;
}

uint64_t wr_minimal_faults(const struct wr_minimal *m)
{
    return atomic_load_explicit(&((struct wr_minimal *)m)->faults, memory_order_relaxed);
}

void wr_minimal_stop(struct wr_minimal *m)
{
    uint64_t one = 1;
    if (write(m->ctl_fd, &one, sizeof one) < 0) {
        /* cannot fail for a fresh eventfd */
    }
    pthread_join(m->thread, NULL);
    munmap((void *)(uintptr_t)m->src, m->size);
    close(m->ctl_fd);
    close(m->uffd);
    free(m);
}
