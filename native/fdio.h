/* Internal helpers for whole-range file I/O, shared by the native modules.
 * Not part of the Python interface: this header has no CDEF block. */
#ifndef WRENND_FDIO_H
#define WRENND_FDIO_H

#include <stdint.h>

/* Read [off, off + n) fully, retrying on EINTR and short reads.
 * Returns 0, -errno, or -EIO when the file ends first. */
int wr_pread_full(int fd, uint8_t *dst, uint64_t n, uint64_t off);

/* The next data extent at or after pos (SEEK_DATA/SEEK_HOLE), clamped to end:
 * [*data, *hole).  Returns 0, 1 when there is no more data before end, or -errno. */
int wr_next_extent(int fd, uint64_t pos, uint64_t end, uint64_t *data, uint64_t *hole);

#endif
