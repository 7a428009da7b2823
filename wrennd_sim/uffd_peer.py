"""The VMM side of Firecracker's uffd protocol, for fcsim, tests and benchmarks.

What Firecracker does on ``PUT /snapshot/load`` with the Uffd backend:
map each guest memory region MAP_PRIVATE|MAP_ANONYMOUS (MAP_HUGETLB for 2 MiB
pages), create a uffd (O_CLOEXEC|O_NONBLOCK) negotiating
UFFD_FEATURE_EVENT_REMOVE, register every region in MISSING mode, connect to
the handler's socket and send one message: the JSON region list with the uffd
as SCM_RIGHTS.  It reads nothing back and keeps the socket open while it
lives.  ``UffdGuest`` bundles those steps; the pieces are usable alone.

Reading or writing guest memory faults on missing pages and blocks until the
handler serves them; the native calls release the GIL, but from asyncio code
run them in an executor.
"""

from __future__ import annotations

import array
import asyncio
import errno
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from wrennd import _native
from wrennd.uffd import handshake
from wrennd.uffd.handshake import Region
from wrennd_sim._simnative import ffi, lib

BASE_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
HUGE_PAGE_SIZE = 2 * 1024 * 1024
TouchPattern = Literal["sequential", "random", "strided"]
_ORDER_KINDS = {
    "sequential": lib.WR_ORDER_SEQUENTIAL,
    "random": lib.WR_ORDER_RANDOM,
    "strided": lib.WR_ORDER_STRIDED,
}


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


class GuestMemory:
    """One guest memory region, mapped as Firecracker maps it."""

    def __init__(self, size: int, page_size: int = BASE_PAGE_SIZE, thp: bool = False) -> None:
        if size <= 0 or size % page_size:
            raise ValueError(
                f"size {size} must be a positive multiple of the page size {page_size}"
            )
        addr = ffi.new("uint64_t *")
        what = f"mapping {size} bytes of guest memory with {page_size}-byte pages"
        _check(lib.wr_vmm_map(size, page_size, int(thp), addr), what)
        self.address: int = addr[0]
        self.size = size
        self.page_size = page_size
        self.closed = False

    def _span(self, offset: int, length: int) -> int:
        if self.closed:
            raise ValueError("guest memory is unmapped")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"range {offset}+{length} outside guest memory of {self.size} bytes")
        return int(self.address + offset)

    def read(self, offset: int, length: int) -> bytes:
        buf = ffi.new("uint8_t[]", max(1, length))
        lib.wr_vmm_read(self._span(offset, length), buf, length)
        return bytes(ffi.buffer(buf, length))

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        src = ffi.from_buffer("uint8_t[]", view)
        lib.wr_vmm_write(self._span(offset, len(view)), src, len(view))

    def discard(self, offset: int, length: int) -> None:
        """madvise(MADV_DONTNEED), as a balloon inflation: the handler gets a REMOVE event.

        On a registered range this blocks until the handler has read the event.
        """
        _check(lib.wr_vmm_discard(self._span(offset, length), length), "madvise(MADV_DONTNEED)")

    def touch(
        self, pages: Sequence[int], write: bool = False, record_latency: bool = True
    ) -> TouchResult:
        """Touch each page once in the given order (native loop, GIL released)."""
        npages = self.size // self.page_size
        order = array.array("Q", pages)
        if order and max(order) >= npages:
            raise ValueError(f"page {max(order)} outside the region's {npages} pages")
        self._span(0, 0)
        lat = array.array("Q", bytes(8 * len(order))) if record_latency else None
        checksum = ffi.new("uint64_t *")
        lib.wr_touch(
            self.address,
            self.page_size,
            ffi.from_buffer("uint64_t[]", order),
            len(order),
            int(write),
            ffi.from_buffer("uint64_t[]", lat) if lat is not None else ffi.NULL,
            checksum,
        )
        return TouchResult(latencies_ns=lat, checksum=checksum[0])

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            _check(lib.wr_vmm_unmap(self.address, self.size), "munmap of guest memory")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass(frozen=True)
class TouchResult:
    latencies_ns: array.array[int] | None
    checksum: int


def touch_order(pattern: TouchPattern, npages: int, arg: int = 0) -> array.array[int]:
    """Page indices in the order of `pattern` (random: seeded by arg; strided: stride arg)."""
    if pattern not in _ORDER_KINDS:
        raise ValueError(f"unknown touch pattern {pattern!r}: expected one of {list(_ORDER_KINDS)}")
    out = array.array("Q", bytes(8 * npages))
    rc = lib.wr_touch_order(_ORDER_KINDS[pattern], npages, arg, ffi.from_buffer("uint64_t[]", out))
    if rc < 0:
        raise ValueError(f"touch pattern {pattern} with argument {arg} is invalid")
    return out


def read_trace(path: Path, npages: int) -> array.array[int]:
    """A trace file: one page index per line (decimal or 0x hex); '#' starts a comment."""
    out = array.array("Q")
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            page = int(text, 0)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: {text!r} is not a page index") from None
        if not 0 <= page < npages:
            raise ValueError(f"{path}:{lineno}: page {page} outside 0..{npages - 1}")
        out.append(page)
    return out


class Userfaultfd:
    """A uffd created as Firecracker creates it (O_CLOEXEC|O_NONBLOCK, EVENT_REMOVE)."""

    def __init__(self) -> None:
        # Created by the daemon's module: the same call is its userfaultfd probe.
        features = _native.ffi.new("uint64_t *")
        self.fd: int = _check(_native.lib.wr_uffd_create(features), "creating a userfaultfd")
        self.features: int = features[0]

    def register(self, address: int, length: int) -> int:
        """Register a range in MISSING mode; returns the ioctls the kernel allows on it."""
        ioctls = ffi.new("uint64_t *")
        _check(
            lib.wr_uffd_register(self.fd, address, length, ioctls),
            f"UFFDIO_REGISTER {address:#x}+{length:#x}",
        )
        return int(ioctls[0])

    def unregister(self, address: int, length: int) -> None:
        _check(
            lib.wr_uffd_unregister(self.fd, address, length),
            f"UFFDIO_UNREGISTER {address:#x}+{length:#x}",
        )

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def regions_for(memories: Sequence[GuestMemory]) -> list[Region]:
    """Handshake regions for mapped memories: offsets are the running sum of sizes."""
    regions = []
    offset = 0
    for m in memories:
        regions.append(Region(m.address, m.size, offset, m.page_size))
        offset += m.size
    return regions


def send_handshake(
    socket_path: str | Path,
    regions: Sequence[Region],
    uffd_fd: int,
    page_size_fields: Sequence[str] = handshake.PAGE_SIZE_FIELDS,
) -> socket.socket:
    """Connect and send the one handshake message as Firecracker does.

    Returns the connected socket: keep it open for as long as the VMM lives
    (closing it tells the handler the VMM is gone).
    """
    body = handshake.encode(regions, page_size_fields)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(os.fspath(socket_path))
        fds = array.array("i", [uffd_fd])
        sent = sock.sendmsg([body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        if sent != len(body):
            raise OSError(errno.EMSGSIZE, f"handshake sent {sent} of {len(body)} bytes")
    except BaseException:
        sock.close()
        raise
    return sock


async def send_handshake_async(
    socket_path: str | Path,
    regions: Sequence[Region],
    uffd_fd: int,
    page_size_fields: Sequence[str] = handshake.PAGE_SIZE_FIELDS,
) -> socket.socket:
    """``send_handshake`` on an executor thread, for callers on an event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        None, send_handshake, socket_path, regions, uffd_fd, page_size_fields
    )


class UffdGuest:
    """A stand-in Firecracker: regions mapped, one uffd registered over all of them.

    ``region_sizes`` lists the regions in memory-file order (a hole between
    them in the address space comes for free: each is its own mapping).
    """

    def __init__(
        self, region_sizes: Sequence[int], page_size: int = BASE_PAGE_SIZE, thp: bool = False
    ) -> None:
        if not region_sizes:
            raise ValueError("at least one region is needed")
        self.memories: list[GuestMemory] = []
        self.uffd: Userfaultfd | None = None
        self.sock: socket.socket | None = None
        try:
            for size in region_sizes:
                self.memories.append(GuestMemory(size, page_size, thp))
            self.uffd = Userfaultfd()
            for m in self.memories:
                self.uffd.register(m.address, m.size)
        except BaseException:
            self.close()
            raise
        self.regions = regions_for(self.memories)
        self.size = sum(region_sizes)
        self.page_size = page_size

    def handshake(
        self,
        socket_path: str | Path,
        page_size_fields: Sequence[str] = handshake.PAGE_SIZE_FIELDS,
    ) -> socket.socket:
        """Send the handshake; the socket stays open (and owned here) until close()."""
        if self.uffd is None or self.sock is not None:
            raise RuntimeError("handshake already sent or guest closed")
        self.sock = send_handshake(socket_path, self.regions, self.uffd.fd, page_size_fields)
        return self.sock

    def locate(self, offset: int) -> tuple[GuestMemory, int]:
        """The region holding memory-file offset `offset`, and the offset inside it."""
        for m, r in zip(self.memories, self.regions, strict=True):
            if r.offset <= offset < r.end_offset:
                return m, offset - r.offset
        raise ValueError(f"offset {offset:#x} outside guest memory of {self.size:#x} bytes")

    def read(self, offset: int, length: int) -> bytes:
        """Read memory-file bytes [offset, offset+length), across regions if needed."""
        parts = []
        while length > 0:
            m, inner = self.locate(offset)
            n = min(length, m.size - inner)
            parts.append(m.read(inner, n))
            offset += n
            length -= n
        return b"".join(parts)

    def write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            m, inner = self.locate(offset)
            n = min(len(view), m.size - inner)
            m.write(inner, view[:n])
            offset += n
            view = view[n:]

    def discard(self, offset: int, length: int) -> None:
        m, inner = self.locate(offset)
        m.discard(inner, length)

    def close(self) -> None:
        """Close the socket (the handler sees EOF), the uffd, and unmap the memory."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.uffd is not None:
            self.uffd.close()
            self.uffd = None
        for m in self.memories:
            m.close()
        self.memories = []

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
