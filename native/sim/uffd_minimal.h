/* The benchmark floor (bench/faultin.py): the simplest possible uffd handler.
 * One thread reads ONE message at a time and installs ONE page by UFFDIO_COPY
 * from a flat memory file mapped read-only: no mapping lookup, no batching,
 * no state.  Not used by the daemon: it lives in wrennd_sim._simnative.
 * See ../zeroscan.h for the CDEF rules. */
#ifndef WRENND_UFFD_MINIMAL_H
#define WRENND_UFFD_MINIMAL_H

#include <stdint.h>

/* CDEF-BEGIN */

struct wr_minimal;

/* Serve the single region host [base, base+size) from file offset 0 of
 * `file_fd` (at least `size` bytes; mapped here, fd not kept).  Takes the
 * uffd on success. */
int wr_minimal_start(int uffd, uint64_t base, uint64_t size, uint64_t page_size, int file_fd,
                     struct wr_minimal **out);

/* Pages installed so far. */
uint64_t wr_minimal_faults(const struct wr_minimal *m);

/* Stop, join, unmap, close the uffd, free. */
void wr_minimal_stop(struct wr_minimal *m);

/* CDEF-END */

#endif
