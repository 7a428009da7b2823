"""Typed Python API over the native mapping algebra (native/mapping.{c,h}).

A mapping is an array of ``struct wr_map_entry`` (offset, length,
storage_offset, source): sorted, contiguous, covering the whole memory;
source ``ZERO_SOURCE`` means zero-fill.  The entries live in a cffi array
that can be handed to C as is (``Mapping.entries`` and ``len(mapping)``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from wrennd._native import ffi, lib
from wrennd.snapshot.errors import MappingError

if sys.byteorder != "little":  # the on-disk entries are the in-memory struct
    raise ImportError("wrennd.snapshot needs a little-endian host")

ZERO_SOURCE: int = lib.WR_SOURCE_ZERO
ENTRY_SIZE: int = ffi.sizeof("struct wr_map_entry")

_PROBLEMS = {
    lib.WR_MAP_NO_ENTRIES: "the mapping is empty",
    lib.WR_MAP_EMPTY: "has length 0",
    lib.WR_MAP_MISALIGNED: "is not block-aligned (offset, length or storage offset)",
    lib.WR_MAP_UNSORTED: "is unsorted: it starts before the previous entry",
    lib.WR_MAP_OVERLAP: "overlaps the previous entry",
    lib.WR_MAP_GAP: "leaves a gap after the previous entry",
    lib.WR_MAP_PAST_END: "runs past the memory size",
    lib.WR_MAP_BAD_SOURCE: "names a source that is not in the generation list",
    lib.WR_MAP_BAD_ZERO: "has a non-zero reserved field or a zero-fill storage offset",
    lib.WR_MAP_STORAGE_OVERFLOW: "has a storage range that overflows",
}


class Entry(NamedTuple):
    offset: int
    length: int
    source: int
    storage_offset: int

    @property
    def is_zero(self) -> bool:
        return self.source == ZERO_SOURCE


class Mapping:
    """An owned cffi array of entries.  Treat as immutable: operations return new mappings."""

    __slots__ = ("count", "entries")

    def __init__(self, entries: Any, count: int) -> None:
        self.entries = entries  # cffi "struct wr_map_entry[]" (or a pointer kept alive by gc)
        self.count = count

    @classmethod
    def allocate(cls, count: int) -> Mapping:
        return cls(ffi.new("struct wr_map_entry[]", max(1, count)), count)

    @classmethod
    def from_entries(cls, items: Iterable[Entry | tuple[int, int, int, int]]) -> Mapping:
        """Build from (offset, length, source, storage_offset) tuples (no validation)."""
        rows = list(items)
        m = cls.allocate(len(rows))
        for i, (offset, length, source, storage) in enumerate(rows):
            e = m.entries[i]
            e.offset, e.length, e.source, e.storage_offset = offset, length, source, storage
        return m

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, count: int) -> Mapping:
        if len(data) != count * ENTRY_SIZE:
            raise ValueError(f"{len(data)} bytes cannot hold {count} entries")
        m = cls.allocate(count)
        ffi.memmove(m.entries, data, len(data))
        return m

    def to_bytes(self) -> bytes:
        return bytes(ffi.buffer(self.entries, self.count * ENTRY_SIZE))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Entry:
        if not 0 <= i < self.count:
            raise IndexError(f"entry {i} outside 0..{self.count - 1}")
        e = self.entries[i]
        return Entry(e.offset, e.length, e.source, e.storage_offset)

    def __iter__(self) -> Iterator[Entry]:
        for i in range(self.count):
            yield self[i]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def __repr__(self) -> str:
        return f"Mapping({list(self)[:8]}{'...' if self.count > 8 else ''}, count={self.count})"

    def lookup(self, offset: int) -> int:
        """Index of the entry holding memory offset `offset` (O(log n)), or -1."""
        if offset < 0:
            return -1
        return int(lib.wr_map_lookup(self.entries, self.count, offset))

    def validate(self, memory_size: int, block_size: int, nsources: int) -> None:
        """Raise MappingError naming the first broken invariant and its entry."""
        where = ffi.new("uint64_t *")
        rc = lib.wr_map_validate(self.entries, self.count, memory_size, block_size, nsources, where)
        if rc == lib.WR_MAP_OK:
            return
        i = int(where[0])
        if rc == lib.WR_MAP_NO_ENTRIES:
            raise MappingError(_PROBLEMS[rc], 0)
        if rc == lib.WR_MAP_GAP and i == self.count:
            last = self[i - 1]
            raise MappingError(
                f"entries end at {last.offset + last.length:#x}, before the memory size "
                f"{memory_size:#x}",
                i,
            )
        e = self[i]
        raise MappingError(
            f"entry {i} (offset {e.offset:#x}, length {e.length:#x}, source {e.source}, "
            f"storage {e.storage_offset:#x}) {_PROBLEMS[rc]}",
            i,
        )

    def overlay(self, top: Mapping) -> Mapping:
        """This mapping with the ranges `top` covers replaced by `top` (not normalized)."""
        cap = self.count + 2 * top.count
        out = Mapping.allocate(cap)
        n = lib.wr_map_overlay(self.entries, self.count, top.entries, top.count, out.entries, cap)
        if n < 0:
            raise MappingError(
                f"overlay refused: {os.strerror(-n)} (top must be sorted, "
                "non-overlapping and inside the parent)",
                0,
            )
        out.count = int(n)
        return out

    def normalized(self) -> Mapping:
        """Neighbours merged where source matches and storage is contiguous."""
        out = Mapping.allocate(self.count)
        ffi.memmove(out.entries, self.entries, self.count * ENTRY_SIZE)
        out.count = int(lib.wr_map_normalize(out.entries, self.count))
        return out

    def flattened(self) -> Mapping:
        """The mapping of the chain collapsed into one flat sparse file (source 0)."""
        out = Mapping.allocate(self.count)
        ffi.memmove(out.entries, self.entries, self.count * ENTRY_SIZE)
        out.count = int(lib.wr_map_flatten(out.entries, self.count))
        return out

    def source_stats(self, nsources: int) -> tuple[list[int], int, list[int]]:
        """(bytes per source, zero-fill bytes, storage end per source)."""
        nbytes = ffi.new("uint64_t[]", nsources + 1)
        ends = ffi.new("uint64_t[]", max(1, nsources))
        if lib.wr_map_source_stats(self.entries, self.count, nsources, nbytes, ends) < 0:
            raise MappingError(f"a source is not below {nsources}", 0)
        return list(nbytes[0:nsources]), int(nbytes[nsources]), list(ends[0:nsources])

    def remapped(self, remap: Sequence[int]) -> Mapping:
        """Copy with every non-zero source s replaced by remap[s]."""
        out = Mapping.allocate(self.count)
        ffi.memmove(out.entries, self.entries, self.count * ENTRY_SIZE)
        table = ffi.new("uint32_t[]", list(remap) or [0])
        if lib.wr_map_remap_sources(out.entries, self.count, table, len(remap)) < 0:
            raise MappingError(f"remap {list(remap)} does not cover every source", 0)
        return out


class Run(NamedTuple):
    """A dirty run of memory; `zero` when all its bytes are zero."""

    offset: int
    length: int
    zero: bool = False


def from_runs(runs: Sequence[Run | tuple[int, int, bool]], source: int) -> Mapping:
    """Map sorted, non-overlapping dirty runs.

    Data runs map to `source` (storage offset = memory offset), zero runs to zero-fill."""
    arr = ffi.new("struct wr_run[]", max(1, len(runs)))
    for i, (offset, length, zero) in enumerate(runs):
        arr[i].offset, arr[i].length, arr[i].zero = offset, length, int(zero)
    out = Mapping.allocate(len(runs))
    n = lib.wr_map_from_runs(arr, len(runs), source, out.entries)
    if n < 0:
        raise MappingError("dirty runs must be non-empty, sorted and non-overlapping", 0)
    out.count = int(n)
    return out


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC32C (Castagnoli) of `data`, continuing from `crc`."""
    view = memoryview(data).cast("B")
    return int(lib.wr_crc32c(crc, ffi.from_buffer("uint8_t[]", view), len(view)))
