/* Host probe: is userfaultfd usable here?  (See zeroscan.h for the CDEF rules.) */
#ifndef WRENND_UFFD_PROBE_H
#define WRENND_UFFD_PROBE_H

/* CDEF-BEGIN */

/* userfaultfd availability: opens a uffd (/dev/userfaultfd first, then the
 * syscall, as Firecracker does), negotiates UFFDIO_API with
 * UFFD_FEATURE_EVENT_REMOVE and closes it again.  0 when usable. */
int wr_uffd_probe(void);

/* CDEF-END */

#endif
