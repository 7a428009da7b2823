"""Firecracker's uffd handshake message: a JSON array of guest memory regions.

Firecracker sends it once, right after connecting, with the uffd attached as
SCM_RIGHTS.  Each region carries ``base_host_virt_addr``, ``size``, ``offset``
(the running sum of earlier sizes: a file offset, not a guest-physical
address) and the page size in bytes, named ``page_size`` (1.12 and later)
and/or ``page_size_kib`` (1.7 to 1.11, bytes despite the name).  Current
releases send both, with the same value.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PAGE_SIZE_FIELDS = ("page_size", "page_size_kib")
_INT_FIELDS = ("base_host_virt_addr", "size", "offset")
HANDSHAKE_BUFSIZE = 1 << 20  # far beyond any region list; one recvmsg reads it all
MAX_FDS = 8  # room to notice (and close) more fds than the one expected
USERFAULTFD_LINK = "anon_inode:[userfaultfd]"


class HandshakeError(ValueError):
    """The peer's handshake cannot be served; the message says what and where."""


@dataclass(frozen=True)
class Region:
    """One guest memory region as Firecracker describes it to the handler."""

    base_host_virt_addr: int
    size: int
    offset: int
    page_size: int

    @property
    def end_offset(self) -> int:
        return self.offset + self.size

    def contains_address(self, address: int) -> bool:
        return self.base_host_virt_addr <= address < self.base_host_virt_addr + self.size


def encode(regions: Sequence[Region], page_size_fields: Sequence[str] = PAGE_SIZE_FIELDS) -> bytes:
    """The message body as Firecracker's serde_json writes it (compact, field order kept)."""
    for name in page_size_fields:
        if name not in PAGE_SIZE_FIELDS:
            raise ValueError(f"unknown page size field {name!r}: expected {PAGE_SIZE_FIELDS}")
    items = []
    for r in regions:
        item: dict[str, int] = {
            "base_host_virt_addr": r.base_host_virt_addr,
            "size": r.size,
            "offset": r.offset,
        }
        for name in page_size_fields:
            item[name] = r.page_size
        items.append(item)
    return json.dumps(items, separators=(",", ":")).encode()


def _region(index: int, item: object) -> Region:
    where = f"region {index}"
    if not isinstance(item, dict):
        raise HandshakeError(f"{where}: expected a JSON object, got {type(item).__name__}")
    values: dict[str, int] = {}
    for name in _INT_FIELDS:
        v = item.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise HandshakeError(f"{where}: {name!r} must be a non-negative integer, got {v!r}")
        values[name] = v
    sizes = {n: item[n] for n in PAGE_SIZE_FIELDS if n in item}
    if not sizes:
        raise HandshakeError(f"{where}: no page size (expected 'page_size' or 'page_size_kib')")
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v & (v - 1):
            raise HandshakeError(f"{where}: {name!r} must be a power of two in bytes, got {v!r}")
    if len(set(sizes.values())) > 1:
        raise HandshakeError(f"{where}: 'page_size' and 'page_size_kib' disagree: {sizes}")
    page_size = next(iter(sizes.values()))
    if values["size"] == 0:
        raise HandshakeError(f"{where}: size is 0")
    for name in _INT_FIELDS:
        if values[name] % page_size:
            raise HandshakeError(
                f"{where}: {name}={values[name]:#x} is not a multiple of the page size {page_size}"
            )
    return Region(page_size=page_size, **values)


def parse(data: bytes) -> list[Region]:
    """Parse and check one handshake body: well-formed, page aligned, offsets contiguous."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HandshakeError(f"handshake is not valid JSON ({len(data)} bytes): {e}") from None
    if not isinstance(doc, list) or not doc:
        raise HandshakeError("handshake must be a non-empty JSON array of regions")
    regions = [_region(i, item) for i, item in enumerate(doc)]
    expected = 0
    for i, r in enumerate(regions):
        if r.offset != expected:
            raise HandshakeError(
                f"region {i}: offset {r.offset:#x}, expected {expected:#x}"
                " (the running sum of earlier region sizes)"
            )
        expected += r.size
    ordered = sorted(regions, key=lambda r: r.base_host_virt_addr)
    for a, b in itertools.pairwise(ordered):
        if a.base_host_virt_addr + a.size > b.base_host_virt_addr:
            raise HandshakeError(
                f"regions at {a.base_host_virt_addr:#x} and {b.base_host_virt_addr:#x} overlap"
            )
    return regions


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
    return fds


def _check_uffd(fd: int) -> None:
    try:
        link = str(Path(f"/proc/self/fd/{fd}").readlink())
    except OSError as e:
        raise HandshakeError(f"cannot inspect the received fd {fd}: {e}") from None
    if link != USERFAULTFD_LINK:
        raise HandshakeError(f"the received fd is {link!r}, not a userfaultfd")


async def _recvmsg(conn: socket.socket) -> tuple[bytes, list[tuple[int, int, bytes]], int]:
    loop = asyncio.get_running_loop()
    while True:
        try:
            msg, anc, flags, _ = conn.recvmsg(
                HANDSHAKE_BUFSIZE, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
            )
            return msg, anc, flags
        except BlockingIOError:
            readable = loop.create_future()
            loop.add_reader(conn.fileno(), readable.set_result, None)
            try:
                await readable
            finally:
                loop.remove_reader(conn.fileno())


async def receive(conn: socket.socket) -> tuple[list[Region], int]:
    """Read the one handshake message: its regions and the userfaultfd it carried.

    HandshakeError for anything else (no fd, several, not a uffd, bad JSON); every
    received fd is closed then."""
    msg, anc, flags = await _recvmsg(conn)
    fds = _received_fds(anc)
    try:
        if flags & socket.MSG_CTRUNC:
            raise HandshakeError("handshake carried more file descriptors than fit (expected 1)")
        if not msg and not fds:
            raise HandshakeError("peer closed the connection before sending the handshake")
        if len(fds) != 1:
            raise HandshakeError(
                f"handshake carried {len(fds)} file descriptors, expected exactly 1 (the uffd)"
            )
        _check_uffd(fds[0])
        return parse(msg), fds[0]
    except BaseException:
        _close_all(fds)
        raise
