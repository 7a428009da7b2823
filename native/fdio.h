/* Internal helpers for whole-range file I/O, shared by the native modules.
 * Not part of the Python interface: this header has no CDEF block. */
#ifndef WRENND_FDIO_H
#define WRENND_FDIO_H

#include <stdint.h>

/* Read [off, off + n) fully, retrying on EINTR and short reads.
 * Returns 0, -errno, or -EIO when the file ends first. */
int wr_pread_full(int fd, uint8_t *dst, uint64_t n, uint64_t off);

#endif
