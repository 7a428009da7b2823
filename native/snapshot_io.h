/* Snapshot memfile I/O: scanning Full/Diff memfiles into mapping entries,
 * punching zero blocks, copying mapped data out (collapse, export).
 * DESIGN.md §4; see zeroscan.h for the CDEF rules.  Blocking calls: Python
 * runs them off the event loop; cffi releases the GIL around each. */
#ifndef WRENND_SNAPSHOT_IO_H
#define WRENND_SNAPSHOT_IO_H

#include <stdint.h>

#include "mapping.h"

/* CDEF-BEGIN */

/* Full memfile: every byte of [0, memory_size) is memory; holes read as zero.
 * Diff memfile: only data extents (SEEK_DATA/SEEK_HOLE) are dirty memory;
 * holes are clean and produce no entries. */
#define WR_SCAN_FULL 0
#define WR_SCAN_DIFF 1

struct wr_scan_result {
    struct wr_map_entry *entries; /* malloc'ed; free with wr_scan_result_free */
    uint64_t count;
    uint64_t data_bytes;  /* bytes mapped to the memfile */
    uint64_t zero_bytes;  /* bytes mapped to zero-fill */
    uint64_t punched_bytes; /* all-zero data bytes punched out of the file */
    uint64_t bad_offset;  /* on -EINVAL/-EIO: the file offset at fault */
};

/* Scan [0, memory_size) of memfile `fd` (block-aligned memory_size) and build
 * entries: non-zero blocks map to `source` at storage offset == memory
 * offset, all-zero blocks to WR_SOURCE_ZERO.  In WR_SCAN_DIFF mode a data
 * extent whose ends are not block-aligned is -EINVAL (bad_offset says where).
 * With punch != 0 the all-zero blocks inside data extents are punched out
 * (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE).  Reads only data extents, so
 * the cost follows the data, not memory_size.  With `crcs` (NULL: none;
 * else memory_size / block_size entries) crcs[i] receives the CRC32C of block
 * i for every block read (data extents, before any punch); other entries are
 * left as they are.  Returns 0 or -errno; on error res->entries is NULL. */
int wr_memfile_scan(int fd, uint64_t memory_size, uint64_t block_size,
                    uint32_t source, int mode, int punch,
                    struct wr_scan_result *res, uint32_t *crcs);

void wr_scan_result_free(struct wr_scan_result *res);

/* For every entry not mapped to zero-fill, copy `length` bytes of
 * fds[source] at storage_offset to out_fd at the entry's offset
 * (copy_file_range, which may share extents, else pread/pwrite).  Zero-fill
 * entries are skipped: out_fd must already read as zeros there (a fresh
 * sparse file).  Returns 0 or -errno with the failing entry in *failed
 * (-EIO: a source file ended early). */
int wr_map_copy_out(const struct wr_map_entry *entries, uint64_t n,
                    const int *fds, uint32_t nfds, int out_fd, uint64_t *failed);

/* Check every entry not mapped to zero-fill whose source has checksums
 * (crcs[source] != NULL: one CRC32C per block_size bytes of that generation
 * file, indexed by storage offset / block_size): read the bytes (pread, in
 * chunks) and compare block by block.  Entries must be block-aligned.
 * Returns 0, -EBADMSG with the failing entry in *failed and the bad block's
 * storage offset in *bad_offset, or -errno (-EIO: a file ended early). */
int wr_map_verify(const struct wr_map_entry *entries, uint64_t n, const int *fds,
                  const uint32_t *const *crcs, uint32_t nfds, uint64_t block_size,
                  uint64_t *failed, uint64_t *bad_offset);

/* CDEF-END */

#endif
