"""Memory snapshot header, format v1 (DESIGN.md §4), defined with construct.

Layout (little-endian, no padding)::

    offset  size         field
    0       8            magic  b"WRNDMEM\\0"
    8       4            format version (1)
    12      4            block size (power of two, 512 .. 1 GiB)
    16      8            memory size (bytes, a multiple of the block size)
    24      4            generation (Diff layers since the chain's base; 0 after Full/collapse)
    28      4            G: number of generation build ids
    32      8            N: number of mapping entries
    40      16           build id (UUID of the generation this snapshot added)
    56      16           base build id (UUID of the chain's Full/collapsed generation)
    72      16*G         generation build ids; source index i names the i-th
    72+16G  32*N         entries: offset u64, length u64, storage offset u64,
                         source u32 (0xFFFF = zero-fill), reserved u32 (0)
    ...     4            CRC32C of every byte before it

The entry records are exactly ``struct wr_map_entry`` (native/mapping.h), so
they are copied into a cffi array in one memmove and validated in C.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from construct import (
    Array,
    Bytes,
    Const,
    ConstructError,
    Int32ul,
    Int64ul,
    Struct,
    Terminated,
    this,
)

from wrennd.snapshot.errors import HeaderError, MappingError
from wrennd.snapshot.mapping import ENTRY_SIZE, ZERO_SOURCE, Mapping, crc32c

MAGIC = b"WRNDMEM\x00"
VERSION = 1
MIN_BLOCK_SIZE = 512
MAX_BLOCK_SIZE = 1 << 30

# One mapping entry (documents the record; bulk parsing goes through cffi).
EntryV1 = Struct(
    "offset" / Int64ul,
    "length" / Int64ul,
    "storage_offset" / Int64ul,
    "source" / Int32ul,
    "reserved" / Int32ul,
)
if EntryV1.sizeof() != ENTRY_SIZE:  # the record must be struct wr_map_entry byte for byte
    raise ImportError(f"EntryV1 is {EntryV1.sizeof()} bytes, struct wr_map_entry {ENTRY_SIZE}")

Prefix = Struct("magic" / Bytes(8), "version" / Int32ul)

Fixed = Struct(
    "magic" / Const(MAGIC),
    "version" / Const(VERSION, Int32ul),
    "block_size" / Int32ul,
    "memory_size" / Int64ul,
    "generation" / Int32ul,
    "generation_count" / Int32ul,
    "entry_count" / Int64ul,
    "build_id" / Bytes(16),
    "base_build_id" / Bytes(16),
)
FIXED_SIZE: int = Fixed.sizeof()

HeaderV1 = Struct(
    "fixed" / Fixed,
    "generations" / Array(this.fixed.generation_count, Bytes(16)),
    "entries" / Bytes(this.fixed.entry_count * ENTRY_SIZE),  # EntryV1[entry_count]
    "crc32c" / Int32ul,
    Terminated,
)


@dataclass(frozen=True, eq=True)
class Header:
    """A parsed (and validated) memory header."""

    block_size: int
    memory_size: int
    generation: int
    build_id: uuid.UUID
    base_build_id: uuid.UUID
    generations: tuple[uuid.UUID, ...]
    mapping: Mapping

    def validate(self, where: str = "header") -> None:
        """Raise HeaderError unless every invariant of format v1 holds."""
        bs = self.block_size
        if bs < MIN_BLOCK_SIZE or bs > MAX_BLOCK_SIZE or bs & (bs - 1):
            raise HeaderError(
                f"{where}: block size {bs} is not a power of two in "
                f"[{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}]"
            )
        if self.memory_size <= 0 or self.memory_size % bs or self.memory_size >= 1 << 63:
            raise HeaderError(
                f"{where}: memory size {self.memory_size} is not a positive "
                f"multiple of the block size {bs}"
            )
        if not 0 <= self.generation < 1 << 32:
            raise HeaderError(f"{where}: generation {self.generation} out of range")
        if len(self.generations) >= ZERO_SOURCE:
            raise HeaderError(
                f"{where}: {len(self.generations)} generations, at most {ZERO_SOURCE - 1}"
            )
        if len(set(self.generations)) != len(self.generations):
            raise HeaderError(f"{where}: a generation build id is listed twice")
        try:
            self.mapping.validate(self.memory_size, bs, len(self.generations))
        except MappingError as e:
            raise MappingError(f"{where}: {e}", e.index) from None

    def to_bytes(self) -> bytes:
        """Validate and serialize, CRC32C included."""
        self.validate()
        return encode_unchecked(self)


def encode_unchecked(header: Header) -> bytes:
    """Serialize without validating (tests use it to write headers that break invariants)."""
    body: bytes = HeaderV1.build(
        {
            "fixed": {
                "block_size": header.block_size,
                "memory_size": header.memory_size,
                "generation": header.generation,
                "generation_count": len(header.generations),
                "entry_count": len(header.mapping),
                "build_id": header.build_id.bytes,
                "base_build_id": header.base_build_id.bytes,
            },
            "generations": [g.bytes for g in header.generations],
            "entries": header.mapping.to_bytes(),
            "crc32c": 0,
        }
    )
    crc: bytes = Int32ul.build(crc32c(memoryview(body)[:-4]))
    return body[:-4] + crc


def expected_size(generation_count: int, entry_count: int) -> int:
    return FIXED_SIZE + 16 * generation_count + ENTRY_SIZE * entry_count + 4


def parse_header(data: bytes, where: str = "header") -> Header:
    """Parse and validate; HeaderError says what is wrong and at which byte or entry."""
    if len(data) < Prefix.sizeof():
        raise HeaderError(f"{where}: truncated: {len(data)} bytes, not even magic and version")
    prefix = Prefix.parse(data)
    if prefix.magic != MAGIC:
        raise HeaderError(f"{where}: bad magic {prefix.magic!r} at byte 0, expected {MAGIC!r}")
    if prefix.version != VERSION:
        raise HeaderError(
            f"{where}: unknown format version {prefix.version} at byte 8, "
            f"this build reads version {VERSION}"
        )
    if len(data) < FIXED_SIZE:
        raise HeaderError(
            f"{where}: truncated: {len(data)} bytes, the fixed part needs {FIXED_SIZE}"
        )
    fixed = Fixed.parse(data)
    need = expected_size(fixed.generation_count, fixed.entry_count)
    if len(data) != need:
        raise HeaderError(
            f"{where}: {'truncated' if len(data) < need else 'trailing bytes'}: {len(data)} "
            f"bytes, but {fixed.generation_count} generations and {fixed.entry_count} entries "
            f"need {need}"
        )
    stored = Int32ul.parse(data[-4:])
    actual = crc32c(memoryview(data)[:-4])
    if stored != actual:
        raise HeaderError(
            f"{where}: bad checksum: stored CRC32C {stored:#010x} at byte "
            f"{len(data) - 4}, computed {actual:#010x}"
        )
    try:
        parsed = HeaderV1.parse(data)
    except ConstructError as e:  # the checks above make this unreachable for sane input
        raise HeaderError(f"{where}: {e}") from None
    header = Header(
        block_size=fixed.block_size,
        memory_size=fixed.memory_size,
        generation=fixed.generation,
        build_id=uuid.UUID(bytes=fixed.build_id),
        base_build_id=uuid.UUID(bytes=fixed.base_build_id),
        generations=tuple(uuid.UUID(bytes=g) for g in parsed.generations),
        mapping=Mapping.from_bytes(parsed.entries, fixed.entry_count),
    )
    header.validate(where)
    return header
