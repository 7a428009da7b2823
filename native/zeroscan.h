/* Zero-block scanner of wrennd._native.
 *
 * Like every header in native/, this one is read twice: by the C compiler, and
 * (between the CDEF markers) by cffi's cdef parser, which accepts only plain
 * declarations.  Functions return 0 or a negative errno unless documented
 * otherwise.
 */
#ifndef WRENND_ZEROSCAN_H
#define WRENND_ZEROSCAN_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */

/* Zero-block scanner.
 *
 * Bit i of `bitmap` (LSB-first within each byte) is set when block i of the
 * input is entirely zero.  The last block may be shorter than block_size; it
 * is judged on the bytes that exist.  `bitmap` must hold
 * ceil(ceil(len / block_size) / 8) bytes; bits past the last block are cleared.
 * Returns the number of all-zero blocks, or -EINVAL.
 */
int64_t wr_zero_scan_buf(const uint8_t *buf, uint64_t len, uint64_t block_size,
                         uint8_t *bitmap);

/* Same over [offset, offset + len) of a file.  Holes (found with SEEK_DATA)
 * are reported as zero without being read; data is read with pread in large
 * chunks.  `offset` must be a multiple of block_size.  The file position of fd
 * is not used or changed.  A range past EOF is -EINVAL (a short file would
 * silently read as zeros otherwise).
 */
int64_t wr_zero_scan_fd(int fd, uint64_t offset, uint64_t len,
                        uint64_t block_size, uint8_t *bitmap);

/* Benchmark floor: the same result computed with one memcmp() per block
 * against a static zero block.  Not used by the daemon. */
int64_t wr_zero_scan_buf_memcmp(const uint8_t *buf, uint64_t len,
                                uint64_t block_size, uint8_t *bitmap);

/* CDEF-END */

#endif
