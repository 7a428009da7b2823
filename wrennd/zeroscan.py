"""Find all-zero blocks in memory or in a file range (native, GIL released).

Snapshot ingest uses this to punch zero blocks out of a Full memfile and map
them to zero-fill (DESIGN.md §4).  The scan itself is C in native/zeroscan.c;
cffi releases the GIL for the duration of each call, so a scan on an executor
thread does not stall the event loop.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass

from wrennd._native import ffi, lib


@dataclass(frozen=True)
class ZeroBitmap:
    """Which blocks of a scanned range are all zero (bit set = zero)."""

    block_size: int
    nblocks: int
    zero_count: int
    bits: bytes

    def is_zero(self, block: int) -> bool:
        if not 0 <= block < self.nblocks:
            raise IndexError(f"block {block} outside 0..{self.nblocks - 1}")
        return bool(self.bits[block >> 3] >> (block & 7) & 1)

    def runs(self, zero: bool = True) -> Iterator[tuple[int, int]]:
        """Yield (first_block, count) for each maximal run of zero (or data) blocks."""
        # Whole bytes of 0x00/0xFF are skipped eight blocks at a time.
        want_byte = 0xFF if zero else 0x00
        start = -1
        block = 0
        while block < self.nblocks:
            if block & 7 == 0 and block + 8 <= self.nblocks:
                byte = self.bits[block >> 3]
                if byte == want_byte:
                    start = block if start < 0 else start
                    block += 8
                    continue
                if byte == want_byte ^ 0xFF:
                    if start >= 0:
                        yield start, block - start
                        start = -1
                    block += 8
                    continue
            if self.is_zero(block) == zero:
                start = block if start < 0 else start
            elif start >= 0:
                yield start, block - start
                start = -1
            block += 1
        if start >= 0:
            yield start, self.nblocks - start


def _check_block_size(block_size: int) -> None:
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")


def _result(rc: int, what: str) -> int:
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


def scan_buffer(buf: bytes | bytearray | memoryview, block_size: int) -> ZeroBitmap:
    """Scan a contiguous buffer (anything exposing the buffer protocol)."""
    _check_block_size(block_size)
    view = memoryview(buf).cast("B")
    nblocks = -(-len(view) // block_size)
    bitmap = ffi.new("uint8_t[]", max(1, -(-nblocks // 8)))
    src = ffi.from_buffer("uint8_t[]", view)
    zeros = _result(lib.wr_zero_scan_buf(src, len(view), block_size, bitmap), "zero scan")
    return ZeroBitmap(block_size, nblocks, zeros, bytes(ffi.buffer(bitmap, -(-nblocks // 8))))


def scan_fd(fd: int, offset: int, length: int, block_size: int) -> ZeroBitmap:
    """Scan [offset, offset+length) of an open file; holes count as zero without being read."""
    _check_block_size(block_size)
    if offset < 0 or length < 0 or offset % block_size:
        raise ValueError(
            f"offset {offset} must be a non-negative multiple of block_size {block_size}"
        )
    size = os.fstat(fd).st_size
    if offset + length > size:
        raise OSError(
            errno.EINVAL, f"range {offset}+{length} runs past the end of the file ({size} bytes)"
        )
    nblocks = -(-length // block_size)
    bitmap = ffi.new("uint8_t[]", max(1, -(-nblocks // 8)))
    zeros = _result(lib.wr_zero_scan_fd(fd, offset, length, block_size, bitmap), "zero scan")
    return ZeroBitmap(block_size, nblocks, zeros, bytes(ffi.buffer(bitmap, -(-nblocks // 8))))
