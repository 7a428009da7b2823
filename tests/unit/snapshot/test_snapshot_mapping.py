"""Python mapping API against a per-block model; header fuzzing with random mappings."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from wrennd.snapshot import Header, HeaderError, Mapping, MappingError, crc32c, from_runs
from wrennd.snapshot.chain import collapse_in_background, export
from wrennd.snapshot.header import parse_header
from wrennd.snapshot.ingest import ingest_diff, ingest_full, prune_generations
from wrennd.snapshot.mapping import ZERO_SOURCE, Run

BS = 4096
BLOCKS = 48
Cell = tuple[int, int]  # (source, storage block); (ZERO_SOURCE, 0) for zero-fill


@st.composite
def mappings(draw: st.DrawFn, sources: int = 3) -> Mapping:
    rows, off = [], 0
    while off < BLOCKS:
        n = draw(st.integers(1, min(6, BLOCKS - off)))
        src = draw(st.sampled_from([*range(sources), ZERO_SOURCE]))
        storage = 0 if src == ZERO_SOURCE else draw(st.integers(0, 64)) * BS
        rows.append((off * BS, n * BS, src, storage))
        off += n
    return Mapping.from_entries(rows)


@st.composite
def run_lists(draw: st.DrawFn) -> list[Run]:
    runs, off = [], draw(st.integers(0, 5))
    while off < BLOCKS:
        n = draw(st.integers(1, min(5, BLOCKS - off)))
        runs.append(Run(off * BS, n * BS, draw(st.booleans())))
        off += n + draw(st.integers(0, 4))
    return runs


def cells(m: Mapping) -> list[Cell]:
    out: list[Cell] = []
    for e in m:
        for b in range(e.length // BS):
            out.append((e.source, 0) if e.is_zero else (e.source, e.storage_offset // BS + b))
    return out


@given(parent=mappings(), runs=run_lists())
def test_overlay_and_normalize_match_the_model(parent: Mapping, runs: list[Run]) -> None:
    top = from_runs(runs, 3)
    want = cells(parent)
    for r in runs:
        for b in range(r.length // BS):
            i = r.offset // BS + b
            want[i] = (ZERO_SOURCE, 0) if r.zero else (3, i)
    merged = parent.overlay(top)
    merged.validate(BLOCKS * BS, BS, 4)
    norm = merged.normalized()
    norm.validate(BLOCKS * BS, BS, 4)
    assert cells(merged) == want and cells(norm) == want
    for a, b in zip(norm, list(norm)[1:], strict=False):  # nothing left to merge
        assert not (a.source == b.source and (a.is_zero or a.storage_offset + a.length
                                              == b.storage_offset))  # fmt: skip
    for blk in range(BLOCKS):
        e = norm[norm.lookup(blk * BS + 7)]
        assert e.offset <= blk * BS < e.offset + e.length
    assert norm.lookup(BLOCKS * BS) == -1 and norm.lookup(-1) == -1


@given(m=mappings(sources=4))
def test_prune_keeps_only_named_generations(m: Mapping) -> None:
    gens = tuple(uuid.UUID(int=i + 1) for i in range(4))
    pruned, kept = prune_generations(m, gens)
    used = {e.source for e in m if not e.is_zero}
    assert set(kept) == {gens[s] for s in used}
    assert [(kept[a] if a != ZERO_SOURCE else None, s) for a, s in cells(pruned)] == [
        (gens[a] if a != ZERO_SOURCE else None, s) for a, s in cells(m)
    ]


@settings(max_examples=60)
@given(m=mappings(), gen=st.integers(0, 2**32 - 1), data=st.data())
def test_random_headers_round_trip_and_any_flip_is_refused(
    m: Mapping, gen: int, data: st.DataObject
) -> None:
    gens = tuple(uuid.uuid4() for _ in range(3))
    h = Header(BS, BLOCKS * BS, gen, gens[2], gens[0], gens, m)
    raw = h.to_bytes()
    assert parse_header(raw) == h
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    flipped = bytearray(raw)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(HeaderError):
        parse_header(bytes(flipped))
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(HeaderError):
        parse_header(raw[:cut])


def test_from_runs_refuses_overlap_and_crc_vector() -> None:
    with pytest.raises(MappingError, match="sorted and non-overlapping"):
        from_runs([Run(0, 2 * BS), Run(BS, BS)], 0)
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"56789", crc32c(b"1234")) == 0xE3069283


async def test_collapse_runs_off_the_event_loop(tmp_path: Path) -> None:
    store = tmp_path / "store"
    memory = bytearray(b"\x01" * BS * 8 + bytes(BS * 8))
    (tmp_path / "full.mem").write_bytes(bytes(memory))
    ingest_full(tmp_path / "full.mem", tmp_path / "s", store)
    with (tmp_path / "d.mem").open("wb") as f:  # sparse: only page 9 is dirty
        f.truncate(BS * 16)
        f.seek(BS * 9)
        f.write(b"\x02" * BS)
    ingest_diff(tmp_path / "d.mem", tmp_path / "s", tmp_path / "s", store)
    memory[BS * 9 : BS * 10] = b"\x02" * BS
    loop_thread = threading.get_ident()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    header = await collapse_in_background(tmp_path / "s", store)
    task.cancel()
    assert threading.get_ident() == loop_thread and ticks > 0
    assert header.generation == 0 and header.base_build_id == header.build_id
    assert [(e.offset // BS, e.length // BS, e.is_zero) for e in header.mapping] == [
        (0, 8, False), (8, 1, True), (9, 1, False), (10, 6, True)
    ]  # fmt: skip
    export(tmp_path / "s", tmp_path / "out", store)
    assert (tmp_path / "out").read_bytes() == bytes(memory)
