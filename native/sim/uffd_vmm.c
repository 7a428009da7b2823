/* The VMM side of the uffd protocol: what Firecracker does before it sends
 * the handshake, and a guest stand-in that touches pages. */
#define _GNU_SOURCE
#include "uffd_vmm.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif
#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << MAP_HUGE_SHIFT)
#endif

#define HUGE_2M (2u * 1024 * 1024)

int wr_uffd_register(int uffd, uint64_t addr, uint64_t len, uint64_t *ioctls_out)
{
    struct uffdio_register reg = {
        .range = {.start = addr, .len = len},
        .mode = UFFDIO_REGISTER_MODE_MISSING,
    };
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0)
        return -errno;
    if (ioctls_out)
        *ioctls_out = reg.ioctls;
    return 0;
}

int wr_uffd_unregister(int uffd, uint64_t addr, uint64_t len)
{
    struct uffdio_range range = {.start = addr, .len = len};
    return ioctl(uffd, UFFDIO_UNREGISTER, &range) < 0 ? -errno : 0;
}

int wr_vmm_map(uint64_t size, uint64_t page_size, int thp, uint64_t *addr_out)
{
    if (size == 0 || page_size == 0 || size % page_size != 0)
        return -EINVAL;
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    if (page_size == HUGE_2M && !thp)
        flags |= MAP_HUGETLB | MAP_HUGE_2MB;
    else if (page_size != (uint64_t)sysconf(_SC_PAGESIZE))
        return -EINVAL; /* THP is asked for on base-page mappings only */
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    if (thp && madvise(p, size, MADV_HUGEPAGE) < 0) {
        int err = errno;
        munmap(p, size);
        return -err;
    }
    *addr_out = (uint64_t)(uintptr_t)p;
    return 0;
}

int wr_vmm_unmap(uint64_t addr, uint64_t size)
{
    return munmap((void *)(uintptr_t)addr, size) < 0 ? -errno : 0;
}

int wr_vmm_discard(uint64_t addr, uint64_t len)
{
    return madvise((void *)(uintptr_t)addr, len, MADV_DONTNEED) < 0 ? -errno : 0;
}

int wr_vmm_read(uint64_t addr, uint8_t *dst, uint64_t len)
{
    memcpy(dst, (const void *)(uintptr_t)addr, len);
    return 0;
}

int wr_vmm_write(uint64_t addr, const uint8_t *src, uint64_t len)
{
    memcpy((void *)(uintptr_t)addr, src, len);
    return 0;
}

static uint64_t xorshift64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

int wr_touch_order(int kind, uint64_t npages, uint64_t arg, uint64_t *out)
{
    switch (kind) {
    case WR_ORDER_SEQUENTIAL:
        for (uint64_t i = 0; i < npages; i++)
            out[i] = i;
        return 0;
    case WR_ORDER_RANDOM: {
        uint64_t s = arg ? arg : 0x9E3779B97F4A7C15ull;
        for (uint64_t i = 0; i < npages; i++)
            out[i] = i;
        for (uint64_t i = npages; i > 1; i--) { /* Fisher-Yates */
            uint64_t j = xorshift64(&s) % i;
            uint64_t t = out[i - 1];
            out[i - 1] = out[j];
            out[j] = t;
        }
        return 0;
    }
    case WR_ORDER_STRIDED: {
        if (arg == 0)
            return -EINVAL;
        uint64_t k = 0;
        for (uint64_t start = 0; start < arg && start < npages; start++)
            for (uint64_t i = start; i < npages; i += arg)
                out[k++] = i;
        return 0;
    }
    default:
        return -EINVAL;
    }
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int64_t wr_touch(uint64_t base, uint64_t page_size, const uint64_t *pages, uint64_t n,
                 int write, uint64_t *lat_ns_out, uint64_t *checksum_out)
{
    uint64_t sum = 0;
    for (uint64_t i = 0; i < n; i++) {
        volatile uint64_t *p = (volatile uint64_t *)(uintptr_t)(base + pages[i] * page_size);
        uint64_t t0 = lat_ns_out ? now_ns() : 0;
        if (write)
            *p = pages[i];
        else
            sum += *p;
        if (lat_ns_out)
            lat_ns_out[i] = now_ns() - t0;
    }
    if (checksum_out)
        *checksum_out = sum;
    return (int64_t)n;
}
