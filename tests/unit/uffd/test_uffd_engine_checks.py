"""The engine's Python-side checks and stats helpers (no uffd needed)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from wrennd.uffd.engine import (
    LATENCY_BUCKETS,
    SOURCE_ZERO,
    Engine,
    EngineConfigError,
    EngineStats,
    MapEntry,
    check_regions,
    check_snapshot,
)
from wrennd.uffd.handshake import Region

P = 4096


def stats(hist: dict[int, int]) -> EngineStats:
    h = [0] * LATENCY_BUCKETS
    for i, n in hist.items():
        h[i] = n
    zeros = dict.fromkeys(
        ["faults", "copy_pages", "copy_bytes", "zero_pages", "zero_bytes", "batches",
         "prefetch_pages", "prefetch_batches", "prefetch_yields", "eexist", "eagain", "removes",
         "removed_pages", "removed_faults", "wakes", "bounce_batches", "window_grows", "lat_sum_ns",
         "lat_max_ns", "stop_error", "prefetch_error"], 0,
    )  # fmt: skip
    return EngineStats(
        lat_count=sum(h), lat_hist=tuple(h), running=False, prefetch_running=False, **zeros
    )


def test_latency_percentiles_are_bucket_upper_bounds() -> None:
    s = stats({10: 90, 15: 9, 20: 1})  # 1 µs-ish, 32 µs-ish, 1 ms-ish
    assert s.latency_percentile_ns(0.5) == 2**11
    assert s.latency_percentile_ns(0.95) == 2**16
    assert s.latency_percentile_ns(1.0) == 2**21
    assert stats({}).latency_percentile_ns(0.5) == 0
    with pytest.raises(ValueError, match="quantile"):
        s.latency_percentile_ns(0)
    d = stats({3: 1}).as_dict()
    assert d["lat_hist"][3] == 1 and d["stop_reason"] == ""
    stopped = dataclasses.replace(stats({}), stop_error=-3)
    assert stopped.as_dict()["stop_reason"] == os.strerror(3)


@pytest.mark.parametrize(
    ("entries", "sizes", "match"),
    [
        ([MapEntry(0, 4 * P, 0, 0)], [4 * P], None),
        ([MapEntry(0, 2 * P, 0, 0)], [4 * P], "mapping covers 8192 bytes, memory is 16384"),
        ([MapEntry(P, 4 * P, 0, 0)], [8 * P], "expected a page-aligned entry starting at 0x0"),
        ([MapEntry(0, 100, 0, 0)], [8 * P], "page-aligned"),
        ([MapEntry(0, 4 * P, 0, 2)], [8 * P], "names source 2, but there are 1 generation"),
        ([MapEntry(0, 4 * P, 2 * P, 0)], [4 * P], "needs bytes 0x2000\\+0x4000 of generation 0"),
        ([MapEntry(0, 4 * P, 0, SOURCE_ZERO)], [], None),
    ],
)
def test_check_snapshot(entries: list[MapEntry], sizes: list[int], match: str | None) -> None:
    if match is None:
        check_snapshot(4 * P, P, entries, sizes)
    else:
        with pytest.raises(EngineConfigError, match=match):
            check_snapshot(4 * P, P, entries, sizes)


def test_check_snapshot_sizes() -> None:
    with pytest.raises(EngineConfigError, match="power of two"):
        check_snapshot(4 * P, 3 * P, [], [])
    with pytest.raises(EngineConfigError, match="not a positive multiple"):
        check_snapshot(P + 1, P, [], [])


def test_check_regions() -> None:
    check_regions([Region(0x10000, 2 * P, 0, P), Region(0x90000, 2 * P, 2 * P, P)], 4 * P, P)
    with pytest.raises(EngineConfigError, match="regions cover 8192 bytes"):
        check_regions([Region(0x10000, 2 * P, 0, P)], 4 * P, P)
    with pytest.raises(EngineConfigError, match="page size 8192, but the snapshot uses 4096"):
        check_regions([Region(0x10000, 4 * P, 0, 2 * P)], 4 * P, P)
    with pytest.raises(EngineConfigError, match="contiguous in offset"):
        check_regions([Region(0x10000, 4 * P, P, P)], 4 * P, P)


def test_engine_refuses_before_mapping(tmp_path: Path) -> None:
    gen = tmp_path / "gen0"
    gen.write_bytes(bytes(2 * P))
    with pytest.raises(EngineConfigError, match="generation 0, which has 8192 bytes"):
        Engine(memory_size=4 * P, page_size=P, entries=[MapEntry(0, 4 * P, 0, 0)], sources=[gen])
    with pytest.raises(EngineConfigError, match="prefetch map refused"):
        Engine(
            memory_size=2 * P, page_size=P, entries=[MapEntry(0, 2 * P, 0, 0)], sources=[gen],
            prefetch=[(P, 4 * P)],
        )  # fmt: skip
    with pytest.raises(FileNotFoundError):
        Engine(memory_size=P, page_size=P, entries=[], sources=[tmp_path / "absent"])


def test_engine_lifecycle_without_start(tmp_path: Path) -> None:
    gen = tmp_path / "gen0"
    gen.write_bytes(bytes(4 * P))
    fds = set(Path("/proc/self/fd").iterdir())
    with Engine(
        memory_size=4 * P, page_size=P, entries=[MapEntry(0, 4 * P, 0, 0)], sources=[gen]
    ) as e:
        assert not e.started and e.working_set() == []
        assert not e.stats().running
        e.stop()
    assert set(Path("/proc/self/fd").iterdir()) == fds
    with pytest.raises(ValueError, match="engine is closed"):
        e.stats()
