"""Prefetch map: the page ranges a snapshot's last resume touched, in first-touch order.

File ``<snapshot_dir>/memory.prefetch`` (little-endian)::

    0    8      magic b"WRNDPFM\\0"
    8    4      format version (1)
    12   4      reserved (0)
    16   8      R: number of ranges
    24   16*R   ranges: offset u64, length u64 (bytes of guest memory)
    ...  4      CRC32C of every byte before it

A missing file is an empty map; a corrupt one is refused.

`learn_prefetch_map` is the rule that writes the next map at a pause (README,
"UFFD engine"): what this resume touched first, in first-touch order, then
what the previous map held that is still in memory, least recently touched
last, so a size cap drops the oldest-untouched ranges first.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

from construct import Array, Const, Int32ul, Int64ul, Struct, Terminated, this

from wrennd.durable import atomic_write
from wrennd.snapshot.errors import HeaderError
from wrennd.snapshot.layout import prefetch_path
from wrennd.snapshot.mapping import crc32c

MAGIC = b"WRNDPFM\x00"
VERSION = 1
Range = tuple[int, int]

PrefetchV1 = Struct(
    "magic" / Const(MAGIC),
    "version" / Const(VERSION, Int32ul),
    "reserved" / Const(0, Int32ul),
    "count" / Int64ul,
    "ranges" / Array(this.count, Struct("offset" / Int64ul, "length" / Int64ul)),
    "crc32c" / Int32ul,
    Terminated,
)
_FIXED = 24
# The fixed fields alone: the range array is packed and unpacked with ``struct`` in one
# call (construct takes about a second for the 40,000 ranges of a 256 MiB guest).
PrefetchHead = Struct(
    "magic" / Const(MAGIC),
    "version" / Const(VERSION, Int32ul),
    "reserved" / Const(0, Int32ul),
    "count" / Int64ul,
)


def _check_ranges(ranges: Sequence[Range], memory_size: int | None, where: str) -> None:
    for i, (offset, length) in enumerate(ranges):
        if offset < 0 or length <= 0 or (memory_size is not None and offset + length > memory_size):
            raise HeaderError(
                f"{where}: range {i} ({offset:#x}, {length:#x}) is empty or "
                f"outside memory of {memory_size} bytes"
            )


def encode_prefetch_map(ranges: Sequence[Range]) -> bytes:
    """The file's bytes (PrefetchV1's layout)."""
    flat = [x for r in ranges for x in r]
    head: bytes = PrefetchHead.build({"count": len(ranges)})
    body = head + struct.pack(f"<{len(flat)}Q", *flat)
    crc: bytes = Int32ul.build(crc32c(body))
    return body + crc


def decode_prefetch_map(data: bytes, where: str = "prefetch map") -> list[Range]:
    if len(data) < _FIXED + 4 or data[:8] != MAGIC:
        raise HeaderError(
            f"{where}: not a prefetch map (bad magic or shorter than {_FIXED + 4} bytes)"
        )
    count = Int64ul.parse(data[16:24])
    if len(data) != _FIXED + 16 * count + 4:
        raise HeaderError(
            f"{where}: {len(data)} bytes, {count} ranges need {_FIXED + 16 * count + 4}"
        )
    stored, actual = Int32ul.parse(data[-4:]), crc32c(memoryview(data)[:-4])
    if stored != actual:
        raise HeaderError(f"{where}: bad checksum {stored:#010x}, computed {actual:#010x}")
    try:
        PrefetchHead.parse(data[:_FIXED])
    except Exception as e:  # construct's ConstError: wrong version or reserved field
        raise HeaderError(f"{where}: {e}") from None
    return list(struct.iter_unpack("<QQ", memoryview(data)[_FIXED:-4]))


def write_prefetch_map(
    snapshot_dir: Path, ranges: Sequence[Range], memory_size: int | None = None
) -> None:
    """Atomically replace the snapshot's prefetch map."""
    _check_ranges(ranges, memory_size, str(prefetch_path(snapshot_dir)))
    atomic_write(prefetch_path(snapshot_dir), encode_prefetch_map(ranges))


def read_prefetch_map(snapshot_dir: Path, memory_size: int | None = None) -> list[Range]:
    """The ranges in first-touch order; [] when the snapshot has no prefetch map."""
    path = prefetch_path(snapshot_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    ranges = decode_prefetch_map(data, str(path))
    _check_ranges(ranges, memory_size, str(path))
    return ranges


class _Taken:
    """Sorted, disjoint byte ranges already placed in the map being built."""

    def __init__(self, ranges: Iterable[Range] = ()) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        for off, n in sorted(ranges):
            self.add(off, off + n)

    def add(self, lo: int, hi: int) -> None:
        i = bisect.bisect_left(self.ends, lo)  # first range that ends at or after lo
        j = bisect.bisect_right(self.starts, hi)  # ranges from i to j touch [lo, hi)
        if i < j:
            lo, hi = min(lo, self.starts[i]), max(hi, self.ends[j - 1])
        self.starts[i:j], self.ends[i:j] = [lo], [hi]

    def outside(self, lo: int, hi: int) -> list[Range]:
        """The pieces of [lo, hi) not covered, in offset order."""
        out = []
        i = bisect.bisect_right(self.ends, lo)
        while lo < hi and i < len(self.starts) and self.starts[i] < hi:
            if self.starts[i] > lo:
                out.append((lo, self.starts[i] - lo))
            lo = max(lo, self.ends[i])
            i += 1
        if lo < hi:
            out.append((lo, hi - lo))
        return out

    def inside(self, lo: int, hi: int) -> list[Range]:
        """The pieces of [lo, hi) covered, in offset order."""
        out, pos = [], lo
        for gap, n in self.outside(lo, hi):
            if gap > pos:
                out.append((pos, gap - pos))
            pos = gap + n
        if pos < hi:
            out.append((pos, hi - pos))
        return out


def _place(pieces: Iterable[Range], taken: _Taken, blocked: _Taken, out: list[Range]) -> None:
    """Append each piece's parts that are neither placed yet nor blocked."""
    for off, n in pieces:
        for lo, m in blocked.outside(off, off + n):
            for part in taken.outside(lo, lo + m):
                out.append(part)
                taken.add(part[0], part[0] + part[1])


def _coalesced_capped(ranges: list[Range], cap: int) -> list[Range]:
    out: list[Range] = []
    total = 0
    for off, n in ranges:
        n = min(n, cap - total)
        if n <= 0:
            break
        if out and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + n)
        else:
            out.append((off, n))
        total += n
    return out


def learn_prefetch_map(
    previous: Sequence[Range],
    faults: Sequence[Range],
    present: Sequence[Range],
    removed: Sequence[Range],
    dirty: Sequence[Range],
    cap_bytes: int,
) -> list[Range]:
    """The prefetch map to store at a pause.  Pure: byte ranges in, byte ranges out.

    previous: the map this resume was given, in its order; faults: what demand
    faults installed, in first-touch order; present: memory installed and not
    given back at the pause; removed: memory given back by UFFD_EVENT_REMOVE
    (and not faulted in again); dirty: what this pause's Diff says was written.

    The map is the union, each byte once, never a removed one: first what this
    resume touched (its faults in first-touch order, then the dirtied parts of
    the previous map in that map's order, then other dirtied memory by offset),
    then the previous map's ranges that were installed but not seen touched, in
    their old order.  Repeated, this orders untouched ranges by how long ago
    they were last touched, so cutting the map to `cap_bytes` from the end
    drops the oldest-untouched first.  A prefetched page that was only read
    leaves no trace (no access bits): it stays, aging, until the cap drops it.
    """
    out: list[Range] = []
    taken, blocked = _Taken(), _Taken(removed)
    dirty_set, present_set = _Taken(dirty), _Taken(present)
    _place(faults, taken, blocked, out)
    _place([p for off, n in previous for p in dirty_set.inside(off, off + n)], taken, blocked, out)
    _place(sorted(dirty), taken, blocked, out)
    _place(
        [p for off, n in previous for p in present_set.inside(off, off + n)], taken, blocked, out
    )
    return _coalesced_capped(out, cap_bytes)
