/* Opening a userfaultfd as Firecracker does.  The daemon uses it as its
 * userfaultfd probe (wrennd.features); the VMM stand-in (wrennd_sim.uffd_peer)
 * uses it to create the uffd it registers, so there is one implementation.
 * See zeroscan.h for the CDEF rules. */
#ifndef WRENND_UFFD_OPEN_H
#define WRENND_UFFD_OPEN_H

#include <stdint.h>

/* CDEF-BEGIN */

/* Create a uffd as Firecracker does: /dev/userfaultfd (USERFAULTFD_IOC_NEW)
 * first, then the userfaultfd syscall, with O_CLOEXEC|O_NONBLOCK, and
 * negotiate UFFDIO_API requiring UFFD_FEATURE_EVENT_REMOVE.  Returns the fd
 * or a negative errno; *features_out (may be NULL) receives the features the
 * kernel reports. */
int wr_uffd_create(uint64_t *features_out);

/* CDEF-END */

#endif
