/* Can this process use userfaultfd the way Firecracker and the engine do? */
#define _GNU_SOURCE
#include "uffd_probe.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

static int open_uffd(void)
{
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev >= 0) {
        int fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
        int saved = errno;
        close(dev);
        if (fd >= 0)
            return fd;
        errno = saved;
    }
    return (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
}

int wr_uffd_probe(void)
{
    int fd = open_uffd();
    if (fd < 0)
        return -errno;
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_EVENT_REMOVE};
    int rc = ioctl(fd, UFFDIO_API, &api) < 0 ? -errno : 0;
    close(fd);
    return rc;
}
