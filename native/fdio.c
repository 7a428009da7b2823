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
