"""Fill and detach: what lets a restored VM stop depending on this process.

The engine's prefetch thread installs every data page of the snapshot in the
background (``fill_ranges``: the mapping's non-zero entries, after the learned
prefetch map, yielding to demand faults as prefetch always does); zero-fill
entries need nothing.  Then ``unregister`` removes the guest memory from the
userfaultfd (UFFDIO_UNREGISTER acts on the VMM's mapping through the uffd the
VMM handed over): later faults, including on a page the guest gave back with
a balloon REMOVE, are ordinary kernel faults that map zeros.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from wrennd.uffd.engine import SOURCE_ZERO
from wrennd.uffd.handshake import Region

if TYPE_CHECKING:
    from wrennd.uffd.server import SnapshotMemory

# _IOR(UFFDIO=0xAA, _UFFDIO_UNREGISTER=0x01, struct uffdio_range { u64 start, len; })
UFFDIO_UNREGISTER = (2 << 30) | (16 << 16) | (0xAA << 8) | 0x01
# _IOR(UFFDIO=0xAA, _UFFDIO_WAKE=0x02, struct uffdio_range)
UFFDIO_WAKE = (2 << 30) | (16 << 16) | (0xAA << 8) | 0x02
_RANGE = struct.Struct("=QQ")


def fill_ranges(memory: SnapshotMemory) -> list[tuple[int, int]]:
    """(offset, length) of every data run of the mapping, adjacent entries merged."""
    out: list[tuple[int, int]] = []
    entries = memory.entries
    count = len(entries) if memory.entry_count is None else memory.entry_count
    for i in range(count):
        e = entries[i]
        if e.source == SOURCE_ZERO:
            continue
        if out and out[-1][0] + out[-1][1] == e.offset:
            out[-1] = (out[-1][0], out[-1][1] + e.length)
        else:
            out.append((e.offset, e.length))
    return out


def fill_bytes(ranges: Sequence[tuple[int, int]]) -> int:
    return sum(length for _, length in ranges)


def unregister(uffd: int, regions: Sequence[Region]) -> None:
    """Unregister every guest memory region from ``uffd`` (wakes any waiting fault)."""
    for r in regions:
        fcntl.ioctl(uffd, UFFDIO_UNREGISTER, _RANGE.pack(r.base_host_virt_addr, r.size))


def wake(uffd: int, regions: Sequence[Region]) -> None:
    """Wake every thread waiting on a fault in the regions: after a hand-over, faults
    the dead handler had read but not served are retried and fault again."""
    for r in regions:
        fcntl.ioctl(uffd, UFFDIO_WAKE, _RANGE.pack(r.base_host_virt_addr, r.size))


class Detacher:
    """A server's fill-and-detach state: the ranges to fill, and a dup of the uffd the
    engine was given (the engine closes its own when it ends)."""

    def __init__(self, memory: SnapshotMemory, fill: bool) -> None:
        self.fill = fill
        self.ranges = fill_ranges(memory) if fill else []
        self.requested = False
        self.done = False
        self._uffd = -1

    def keep(self, uffd: int) -> None:
        if self.fill:
            self._uffd = os.dup(uffd)

    def request(self) -> None:
        """Ask for a detach: the server's stop() then ends serving and unregisters."""
        if self._uffd < 0:
            raise RuntimeError("detach needs a server started with fill=True and a peer")
        self.requested = True

    def finish(self, regions: Sequence[Region], reason: str) -> str:
        """With the engine joined: unregister if asked (a fault arriving meanwhile waits,
        and is woken to be an ordinary kernel fault); the reason serving ended."""
        if self.requested and reason == "stopped" and self._uffd >= 0:
            unregister(self._uffd, regions)
            self.done, reason = True, "detached"
        self.close()
        return reason

    def close(self) -> None:
        if self._uffd >= 0:
            os.close(self._uffd)
            self._uffd = -1
