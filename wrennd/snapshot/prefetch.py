"""Prefetch map: the page ranges a snapshot's last resume touched, in first-touch order.

File ``<snapshot_dir>/memory.prefetch`` (little-endian)::

    0    8      magic b"WRNDPFM\\0"
    8    4      format version (1)
    12   4      reserved (0)
    16   8      R: number of ranges
    24   16*R   ranges: offset u64, length u64 (bytes of guest memory)
    ...  4      CRC32C of every byte before it

A missing file is an empty map; a corrupt one is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def _check_ranges(ranges: Sequence[Range], memory_size: int | None, where: str) -> None:
    for i, (offset, length) in enumerate(ranges):
        if offset < 0 or length <= 0 or (memory_size is not None and offset + length > memory_size):
            raise HeaderError(
                f"{where}: range {i} ({offset:#x}, {length:#x}) is empty or "
                f"outside memory of {memory_size} bytes"
            )


def encode_prefetch_map(ranges: Sequence[Range]) -> bytes:
    body: bytes = PrefetchV1.build(
        {
            "count": len(ranges),
            "ranges": [{"offset": o, "length": n} for o, n in ranges],
            "crc32c": 0,
        }
    )
    crc: bytes = Int32ul.build(crc32c(memoryview(body)[:-4]))
    return body[:-4] + crc


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
        parsed = PrefetchV1.parse(data)
    except Exception as e:  # construct's ConstError: wrong version or reserved field
        raise HeaderError(f"{where}: {e}") from None
    return [(r.offset, r.length) for r in parsed.ranges]


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
