"""Generation checksums: one CRC32C per block of each generation file.

A generation's checksums live beside it in the store, in ``<build_id>.crc``
(immutable like the generation, written before it is published, deleted with
it).  Layout (little-endian)::

    offset  size     field
    0       8        magic  b"WRNDCRC\\0"
    8       4        format version (1)
    12      4        block size (the header's)
    16      8        count: blocks of the generation file covered
    24      4*count  CRC32C of block i (storage offset i * block size); blocks
                     no mapping entry names hold 0 (left as a hole on disk)

Ingest fills them from the scan that finds zero blocks (no second read);
collapse carries them over to the merged generation; ``verify``, collapse
and the daemon's scrub check every mapped block; the UFFD engine checks each
block as it installs it.  A generation without a checksum file (written
before checksums existed) is served and collapsed unchecked, and says so.
"""

from __future__ import annotations

import array
import os
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wrennd import durable
from wrennd._native import ffi, lib
from wrennd.snapshot.errors import ChecksumError, GenerationError
from wrennd.snapshot.mapping import ZERO_SOURCE, Mapping

MAGIC = b"WRNDCRC\x00"
VERSION = 1
_PREFIX = struct.Struct("<8sIIQ")
ARRAY_OFFSET = _PREFIX.size
# Checksum runs this close (bytes of the table) are written together (see write).
COALESCE_GAP = 64 << 10
SUFFIX = ".crc"


def checksum_path(generation_file: Path) -> Path:
    """Where a store generation's checksums live."""
    return generation_file.with_name(generation_file.name + SUFFIX)


def store_checksum_path(store: Path, build_id: uuid.UUID) -> Path:
    return store / f"{build_id}{SUFFIX}"


def parse_checksum_name(name: str) -> uuid.UUID | None:
    """The build id a ``<build_id>.crc`` file belongs to, else None."""
    if not name.endswith(SUFFIX):
        return None
    stem = name[: -len(SUFFIX)]
    try:
        value = uuid.UUID(stem)
    except ValueError:
        return None
    return value if str(value) == stem else None


def new_table(count: int) -> Any:
    """A zeroed cffi ``uint32_t[count]`` for a scan to fill."""
    return ffi.new("uint32_t[]", max(1, count))


@dataclass(frozen=True)
class Checksums:
    """One generation's checksums, loaded."""

    path: Path
    block_size: int
    values: array.array[int]

    def pointer(self) -> Any:
        """A cffi ``const uint32_t *`` over the values (valid while self lives)."""
        return ffi.cast("const uint32_t *", ffi.from_buffer(self.values))


def table_bytes(table: Any, count: int) -> memoryview:
    """The bytes of a cffi table (new_table) or an array('I')."""
    if isinstance(table, array.array):
        return memoryview(table).cast("B")
    return memoryview(ffi.buffer(table, 4 * max(1, count)))


def write(
    path: Path, block_size: int, raw: memoryview, count: int, mapping: Mapping, source: int
) -> None:
    """Write the checksums (`raw`: table_bytes) of the blocks `mapping` maps to
    `source` (tmp, fsync, rename).

    Only those blocks are written: the file is sparse like a Diff generation,
    so its cost follows the dirty bytes, not the memory size.  Runs closer than
    ``COALESCE_GAP`` bytes of checksums are written in one call, gap included: the
    table holds zeros there, which is what the hole would read as (a 10 %-dirty
    Diff of a 256 MiB guest has some 6,000 runs: one write instead of 6,000)."""
    with durable.replacing(path, 0o400) as fd:  # private like its generation
        durable.write_all(fd, _PREFIX.pack(MAGIC, VERSION, block_size, count))
        os.ftruncate(fd, ARRAY_OFFSET + 4 * count)
        for lo, hi in _spans(mapping, source, block_size):
            os.pwrite(fd, raw[4 * lo : 4 * hi], ARRAY_OFFSET + 4 * lo)


def _spans(mapping: Mapping, source: int, block_size: int) -> list[tuple[int, int]]:
    """The block ranges of `source`'s entries, neighbours closer than the gap merged."""
    runs = sorted(
        (e.storage_offset // block_size, (e.storage_offset + e.length) // block_size)
        for e in mapping
        if e.source == source
    )
    spans: list[tuple[int, int]] = []
    for lo, hi in runs:
        if spans and lo - spans[-1][1] <= COALESCE_GAP // 4:
            spans[-1] = (spans[-1][0], max(spans[-1][1], hi))
        else:
            spans.append((lo, hi))
    return spans


def _check_prefix(path: Path, data: bytes, total: int, block_size: int, file_size: int) -> int:
    """The block count of a checksum file, after checking it fits the generation."""
    if len(data) < ARRAY_OFFSET:
        raise ChecksumError(f"{path}: truncated checksum file ({total} bytes)", path, None)
    magic, version, bs, count = _PREFIX.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise ChecksumError(f"{path}: not a checksum file of format {VERSION}", path, None)
    if bs != block_size or count < -(-file_size // block_size) or total != ARRAY_OFFSET + 4 * count:
        raise ChecksumError(
            f"{path}: checksums for {count} blocks of {bs} bytes in {total} bytes do not "
            f"fit a generation of {file_size} bytes in blocks of {block_size}",
            path,
            None,
        )
    return int(count)


def open_checked(path: Path, block_size: int, file_size: int) -> tuple[int, int]:
    """Open a checksum file for the UFFD engine (which maps it): (fd, count).
    The caller closes the fd.  ChecksumError when it does not fit."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        total = os.fstat(fd).st_size
        count = _check_prefix(path, os.pread(fd, ARRAY_OFFSET, 0), total, block_size, file_size)
    except BaseException:
        os.close(fd)
        raise
    return fd, count


def load(path: Path, block_size: int, file_size: int) -> Checksums | None:
    """The checksums at `path`, or None when there is no such file (an old
    generation).  A file that is damaged or does not fit the generation is
    ChecksumError: it cannot vouch for anything."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    _check_prefix(path, data, len(data), block_size, file_size)
    bs = block_size
    values = array.array("I")
    values.frombytes(data[ARRAY_OFFSET:])
    return Checksums(path, bs, values)


def locate(generation: Path, store: Path | None) -> Path:
    """A generation's checksum file: in the store (a snapshot's link to the
    generation has none beside it), else beside the given file."""
    if store is not None:
        in_store = store / (generation.name + SUFFIX)
        if in_store.exists():
            return in_store
    return checksum_path(generation)


def load_for(paths: Sequence[Path], block_size: int, store: Path | None) -> list[Checksums | None]:
    """Checksums of each generation file (None where it has none)."""
    return [load(locate(p, store), block_size, p.stat().st_size) for p in paths]


def verify_mapping(
    mapping: Mapping,
    fds: Sequence[int],
    paths: Sequence[Path],
    sums: Sequence[Checksums | None],
    block_size: int,
) -> None:
    """Read every mapped block that has a checksum and compare; raise
    ChecksumError naming the generation and block of the first mismatch."""
    if not any(sums):
        return
    keep = [s.pointer() if s is not None else ffi.NULL for s in sums]
    crcs = ffi.new("const uint32_t *[]", keep or [ffi.NULL])
    arr = ffi.new("int[]", list(fds) or [-1])
    failed, bad = ffi.new("uint64_t *"), ffi.new("uint64_t *")
    rc = lib.wr_map_verify(
        mapping.entries, len(mapping), arr, crcs, len(fds), block_size, failed, bad
    )
    if rc == 0:
        return
    e = mapping[int(failed[0])]
    path = paths[e.source] if e.source < len(paths) else Path(f"source-{e.source}")
    if rc == -74:  # EBADMSG
        offset = int(bad[0])
        raise ChecksumError(
            f"generation {path.name} ({path}): block {offset // block_size} (storage offset "
            f"{offset:#x}, memory offset {e.offset + offset - e.storage_offset:#x}) does not "
            "match its checksum",
            path,
            offset // block_size,
        )
    raise GenerationError(f"{path}: reading at {int(bad[0]):#x}: {os.strerror(-rc)}")


def carry_over(
    old: Mapping, sums: Sequence[Checksums | None], block_size: int, memory_size: int
) -> array.array[int] | None:
    """Checksums of the collapsed (flat) generation, taken from the old
    generations' checksums: block i of the new file is memory block i.  None
    when some mapped generation has none (the caller computes them)."""
    out = array.array("I", bytes(4 * (memory_size // block_size)))
    for e in old:
        if e.source == ZERO_SOURCE:
            continue
        s = sums[e.source]
        if s is None:
            return None
        lo, n, so = e.offset // block_size, e.length // block_size, e.storage_offset // block_size
        out[lo : lo + n] = s.values[so : so + n]
    return out
