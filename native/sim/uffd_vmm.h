/* The VMM side of Firecracker's userfaultfd protocol, for fcsim, tests and
 * benchmarks (DESIGN.md §5), in the simulator's own module wrennd_sim._simnative:
 * guest memory mapped the way Firecracker maps it, a uffd registered the way
 * Firecracker does (it is created by wr_uffd_create, native/uffd_open.h, in
 * the daemon's module), and a page toucher that plays the guest.  The
 * handshake message itself is sent from Python (wrennd_sim/uffd_peer.py).
 * See ../zeroscan.h for the CDEF rules.  Functions return 0 (or a count) on
 * success and a negative errno on failure.
 */
#ifndef WRENND_UFFD_VMM_H
#define WRENND_UFFD_VMM_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */

/* UFFDIO_REGISTER [addr, addr+len) in MISSING mode; *ioctls_out receives the
 * ioctl bitmask the kernel allows on the range. */
int wr_uffd_register(int uffd, uint64_t addr, uint64_t len, uint64_t *ioctls_out);

/* UFFDIO_UNREGISTER [addr, addr+len). */
int wr_uffd_unregister(int uffd, uint64_t addr, uint64_t len);

/* Guest memory as Firecracker maps it: MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE,
 * plus MAP_HUGETLB|MAP_HUGE_2MB when page_size is 2 MiB.  thp != 0 asks for
 * transparent huge pages with madvise(MADV_HUGEPAGE) (4 KiB pages only). */
int wr_vmm_map(uint64_t size, uint64_t page_size, int thp, uint64_t *addr_out);

int wr_vmm_unmap(uint64_t addr, uint64_t size);

/* madvise(MADV_DONTNEED): what a balloon inflation does; a registered range
 * produces a UFFD_EVENT_REMOVE and faults again on the next touch. */
int wr_vmm_discard(uint64_t addr, uint64_t len);

/* Copy guest memory out / in.  Touching missing pages faults and blocks until
 * the handler serves them, so these run with the GIL released. */
int wr_vmm_read(uint64_t addr, uint8_t *dst, uint64_t len);
int wr_vmm_write(uint64_t addr, const uint8_t *src, uint64_t len);

/* Page orders for the toucher.  Each fills out[0..npages) with page indices:
 * sequential 0,1,2...; random: a permutation (xorshift seeded by `arg`);
 * strided: 0, s, 2s, ... then 1, 1+s, ... (s = arg, every page once). */
#define WR_ORDER_SEQUENTIAL 0
#define WR_ORDER_RANDOM 1
#define WR_ORDER_STRIDED 2
int wr_touch_order(int kind, uint64_t npages, uint64_t arg, uint64_t *out);

/* Touch pages[0..n) of the mapping at `base` (page_size bytes each), in that
 * order, once each.  Read: load the first 8 bytes of the page.  Write: store
 * the page index (little-endian u64) at the page's first 8 bytes, a pure
 * write fault.  lat_ns_out (may be NULL) receives each touch's latency from
 * CLOCK_MONOTONIC; *checksum_out the sum of the loaded words (read mode).
 * Returns n. */
int64_t wr_touch(uint64_t base, uint64_t page_size, const uint64_t *pages, uint64_t n,
                 int write, uint64_t *lat_ns_out, uint64_t *checksum_out);

/* CDEF-END */

#endif
