"""Header v1: round trip, every invariant refused with its reason, corruption refused."""

from __future__ import annotations

import uuid

import pytest

from wrennd.snapshot import Header, HeaderError, Mapping, MappingError, parse_header
from wrennd.snapshot.header import FIXED_SIZE, MAGIC, encode_unchecked
from wrennd.snapshot.mapping import ZERO_SOURCE

BS = 4096
G0, G1 = uuid.UUID(int=1), uuid.UUID(int=2)


def make_header(entries: list[tuple[int, int, int, int]] | None = None, **kw: object) -> Header:
    rows = entries or [
        (0, 2 * BS, 0, 0),
        (2 * BS, BS, ZERO_SOURCE, 0),
        (3 * BS, 5 * BS, 1, 3 * BS),
    ]
    fields: dict[str, object] = {
        "block_size": BS,
        "memory_size": 8 * BS,
        "generation": 1,
        "build_id": G1,
        "base_build_id": G0,
        "generations": (G0, G1),
        "mapping": Mapping.from_entries(rows),
    }
    fields.update(kw)
    return Header(**fields)  # type: ignore[arg-type]


def test_round_trip() -> None:
    h = make_header()
    data = h.to_bytes()
    assert data[:8] == MAGIC
    assert len(data) == FIXED_SIZE + 2 * 16 + 3 * 32 + 4
    back = parse_header(data)
    assert back == h
    assert list(back.mapping)[1].is_zero


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        ([(0, 2 * BS, 0, 0), (BS, 7 * BS, 1, 0)], "overlaps"),
        ([(0, 2 * BS, 0, 0), (3 * BS, 5 * BS, 1, 0)], "gap"),
        ([(0, 2 * BS, 0, 0), (2 * BS, 5 * BS, 1, 0)], "before the memory size"),
        ([(0, 2 * BS, 0, 0), (2 * BS, 7 * BS, 1, 0)], "past the memory size"),
        ([(0, 2 * BS, 0, 0), (2 * BS, 6 * BS, 2, 0)], "not in the generation list"),
        ([(0, 2 * BS, 0, 0), (2 * BS, 6 * BS, 1, 100)], "not block-aligned"),
        ([(0, 2 * BS, 0, 0), (2 * BS, 0, 1, 0), (2 * BS, 6 * BS, 1, 0)], "length 0"),
        ([(2 * BS, 6 * BS, 1, 0), (0, 2 * BS, 0, 0)], "gap"),
        ([(0, 4 * BS, 0, 0), (4 * BS, 4 * BS, 1, 0), (0, BS, 1, 0)], "unsorted"),
        ([(0, 8 * BS, ZERO_SOURCE, BS)], "zero-fill storage"),
    ],
)
def test_build_refuses_bad_entries(rows: list[tuple[int, int, int, int]], problem: str) -> None:
    with pytest.raises(MappingError, match=problem):
        make_header(rows).to_bytes()


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"block_size": 3000}, "block size"),
        ({"memory_size": 8 * BS + 1}, "memory size"),
        ({"generations": (G0, G0)}, "listed twice"),
    ],
)
def test_build_refuses_bad_fields(fields: dict[str, object], problem: str) -> None:
    with pytest.raises(HeaderError, match=problem):
        make_header(**fields).to_bytes()


def test_parse_refuses_entries_that_break_invariants() -> None:
    """A header whose CRC is right but whose entries overlap is still refused."""
    data = encode_unchecked(make_header([(0, 2 * BS, 0, 0), (BS, 7 * BS, 1, 0)]))
    with pytest.raises(MappingError, match=r"where\.hdr: entry 1 .* overlaps") as info:
        parse_header(data, "where.hdr")
    assert info.value.index == 1


def test_every_bit_flip_is_refused() -> None:
    data = make_header().to_bytes()
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(HeaderError):
            parse_header(bytes(flipped))


def test_every_truncation_and_extension_is_refused() -> None:
    data = make_header().to_bytes()
    for n in range(len(data)):
        with pytest.raises(HeaderError, match="truncated"):
            parse_header(data[:n])
    with pytest.raises(HeaderError, match="trailing"):
        parse_header(data + b"\0")


def test_errors_name_the_problem() -> None:
    data = make_header().to_bytes()
    with pytest.raises(HeaderError, match="bad magic"):
        parse_header(b"XXXXXXXX" + data[8:])
    with pytest.raises(HeaderError, match="unknown format version 2"):
        parse_header(data[:8] + (2).to_bytes(4, "little") + data[12:])
    with pytest.raises(HeaderError, match="bad checksum"):
        parse_header(data[:-1] + bytes([data[-1] ^ 1]))
