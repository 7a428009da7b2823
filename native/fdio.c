#define _GNU_SOURCE
#include "fdio.h"

#include <errno.h>
#include <unistd.h>

int wr_pread_full(int fd, uint8_t *dst, uint64_t n, uint64_t off)
{
    while (n > 0) {
        ssize_t r = pread(fd, dst, n, (off_t)off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            return -EIO;
        dst += r;
        n -= (uint64_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

int wr_next_extent(int fd, uint64_t pos, uint64_t end, uint64_t *data, uint64_t *hole)
{
    off_t d = lseek(fd, (off_t)pos, SEEK_DATA);
    if (d < 0)
        return errno == ENXIO ? 1 : -errno;
    if ((uint64_t)d >= end)
        return 1;
    off_t h = lseek(fd, d, SEEK_HOLE);
    if (h < 0)
        return -errno;
    *data = (uint64_t)d;
    *hole = (uint64_t)h < end ? (uint64_t)h : end;
    return 0;
}
