"""open_snapshot: validated header, generation paths, prefetch map; damage refused."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from wrennd._native import ffi, lib
from wrennd.snapshot import (
    GenerationError,
    Header,
    HeaderError,
    Mapping,
    open_snapshot,
    read_prefetch_map,
    write_prefetch_map,
)
from wrennd.snapshot.layout import header_path, link_path, prefetch_path, store_path
from wrennd.snapshot.mapping import ZERO_SOURCE
from wrennd.snapshot.store import commit, delete_snapshot, generation_files

BS = 4096
G0, G1 = uuid.UUID(int=10), uuid.UUID(int=11)


@pytest.fixture
def snap(tmp_path: Path) -> tuple[Path, Path]:
    store, sdir = tmp_path / "store", tmp_path / "snap"
    store.mkdir()
    store_path(store, G0).write_bytes(b"\1" * 2 * BS)
    store_path(store, G1).write_bytes(b"\2" * 8 * BS)
    header = Header(
        block_size=BS,
        memory_size=8 * BS,
        generation=1,
        build_id=G1,
        base_build_id=G0,
        generations=(G0, G1),
        mapping=Mapping.from_entries(
            [(0, 2 * BS, 0, 0), (2 * BS, BS, ZERO_SOURCE, 0), (3 * BS, 5 * BS, 1, 3 * BS)]
        ),
    )
    commit(sdir, store, header)
    return sdir, store


def test_open_exposes_what_the_engine_needs(snap: tuple[Path, Path]) -> None:
    sdir, store = snap
    write_prefetch_map(sdir, [(3 * BS, BS), (0, 2 * BS)], 8 * BS)
    s = open_snapshot(sdir, store)
    assert (s.memory_size, s.block_size, s.generation) == (8 * BS, BS, 1)
    assert s.generation_ids == (G0, G1)
    assert s.generation_paths == (link_path(sdir, G0), link_path(sdir, G1))
    assert s.prefetch == ((3 * BS, BS), (0, 2 * BS))
    assert s.entry_count == 3
    assert ffi.typeof(s.entries) is ffi.typeof("struct wr_map_entry[]")
    assert lib.wr_map_lookup(s.entries, s.entry_count, 4 * BS) == 2
    assert s.entries[2].storage_offset == 3 * BS
    # the store keeps one link, the snapshot the other
    assert store_path(store, G0).stat().st_nlink == 2
    assert generation_files(store) == {G0, G1}


def test_store_copy_serves_when_the_link_is_gone(snap: tuple[Path, Path]) -> None:
    sdir, store = snap
    link_path(sdir, G0).unlink()
    assert open_snapshot(sdir, store).generation_paths[0] == store_path(store, G0)
    with pytest.raises(GenerationError, match="missing"):
        open_snapshot(sdir)


def test_missing_generation_is_refused(snap: tuple[Path, Path]) -> None:
    sdir, store = snap
    link_path(sdir, G1).unlink()
    store_path(store, G1).unlink()
    with pytest.raises(GenerationError, match=f"generation {G1} is missing"):
        open_snapshot(sdir, store)


def test_short_generation_is_refused(snap: tuple[Path, Path]) -> None:
    sdir, store = snap
    os.truncate(link_path(sdir, G1), 8 * BS - 1)
    with pytest.raises(GenerationError, match="entries need 32768"):
        open_snapshot(sdir, store)


def test_corrupt_header_is_refused_and_a_corrupt_prefetch_map_ignored(
    snap: tuple[Path, Path],
) -> None:
    sdir, store = snap
    data = header_path(sdir).read_bytes()
    header_path(sdir).write_bytes(data[:-7])
    with pytest.raises(HeaderError, match="truncated"):
        open_snapshot(sdir, store)
    header_path(sdir).write_bytes(data)
    write_prefetch_map(sdir, [(0, BS)])
    raw = bytearray(prefetch_path(sdir).read_bytes())
    raw[25] ^= 4
    prefetch_path(sdir).write_bytes(bytes(raw))
    with pytest.raises(HeaderError, match="checksum"):
        read_prefetch_map(sdir)
    # Only a speed hint (issue 20): the snapshot opens, with every page served on demand.
    assert open_snapshot(sdir, store).prefetch == ()


def test_prefetch_map_round_trip_and_range_checks(tmp_path: Path) -> None:
    assert read_prefetch_map(tmp_path) == []
    ranges = [(i * BS, BS * (i % 3 + 1)) for i in range(50, 0, -1)]
    write_prefetch_map(tmp_path, ranges, 1 << 30)
    assert read_prefetch_map(tmp_path) == ranges
    with pytest.raises(HeaderError, match="outside memory"):
        read_prefetch_map(tmp_path, memory_size=10 * BS)
    with pytest.raises(HeaderError, match="range 0"):
        write_prefetch_map(tmp_path, [(0, 0)])


def test_open_generations_survive_a_later_delete(snap: tuple[Path, Path]) -> None:
    sdir, store = snap
    s = open_snapshot(sdir, store)
    fds = s.open_generations()
    try:
        delete_snapshot(sdir, store)
        assert generation_files(store) == set()
        assert os.pread(fds[1], 4, 3 * BS) == b"\2" * 4
    finally:
        for fd in fds:
            os.close(fd)
    with pytest.raises(GenerationError, match="generation 0"):
        s.open_generations()
