"""The pause path's prefetch-map inputs (wrennd.sandbox.prefetching)."""

from __future__ import annotations

import uuid
from pathlib import Path

from wrennd.sandbox.prefetching import dirty_ranges, prefetch_cap, record_prefetch_map
from wrennd.snapshot import ZERO_SOURCE, Header, Mapping, read_prefetch_map
from wrennd.uffd.engine import EngineStats
from wrennd.uffd.server import ServeResult

P = 4096
OLD, NEW = uuid.uuid4(), uuid.uuid4()


def header(generations: tuple[uuid.UUID, ...], build_id: uuid.UUID) -> Header:
    # memory: [0, 4P) gen 0, [4P, 5P) zero, [5P, 6P) gen 1, [6P, 8P) gen 0, [8P, 9P) gen 1
    mapping = Mapping.from_entries(
        [(0, 4 * P, 0, 0), (4 * P, P, ZERO_SOURCE, 0), (5 * P, P, 1, 5 * P),
         (6 * P, 2 * P, 0, 4 * P), (8 * P, P, 1, 8 * P)]
    )  # fmt: skip
    h = Header(P, 9 * P, 1, build_id, OLD, generations, mapping)
    h.validate()
    return h


def test_dirty_ranges_are_the_new_generations_entries() -> None:
    h = header((OLD, NEW), NEW)
    assert dirty_ranges(h, "Diff") == [(5 * P, P), (8 * P, P)]
    assert dirty_ranges(h, "Full") == []  # a Full snapshot says nothing about writes


def test_a_diff_of_only_zero_pages_adds_no_generation() -> None:
    assert dirty_ranges(header((OLD, NEW), uuid.uuid4()), "Diff") == []


def test_cap_default_is_the_memory_size() -> None:
    assert prefetch_cap(0, 9 * P) == 9 * P
    assert prefetch_cap(2 * P, 9 * P) == 2 * P


def test_record_writes_the_learnt_map(tmp_path: Path) -> None:
    stats = EngineStats(**dict.fromkeys(EngineStats.__dataclass_fields__, 0) | {"lat_hist": ()})
    result = ServeResult(
        reason="peer-closed",
        stats=stats,
        working_set=[(2 * P, P)],
        prefetch_map=[(6 * P, 2 * P), (0, P)],
        present=[(0, 3 * P), (5 * P, 4 * P)],
        removed=[(7 * P, P)],
    )
    got = record_prefetch_map(tmp_path, result, header((OLD, NEW), NEW), "Diff", 0)
    # the fault, the dirtied page, then the old map's still-present parts in its order
    assert got == [(2 * P, P), (5 * P, P), (8 * P, P), (6 * P, P), (0, P)]
    assert read_prefetch_map(tmp_path) == got
