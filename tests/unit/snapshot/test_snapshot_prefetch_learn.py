"""The prefetch map's learning rule (wrennd.snapshot.prefetch.learn_prefetch_map)."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wrennd.snapshot.errors import HeaderError
from wrennd.snapshot.mapping import crc32c
from wrennd.snapshot.prefetch import (
    PrefetchV1,
    Range,
    decode_prefetch_map,
    encode_prefetch_map,
    learn_prefetch_map,
)

P = 4096
BIG = 1 << 40


def pages(*spans: tuple[int, int]) -> list[Range]:
    """Ranges given in pages, as bytes."""
    return [(a * P, n * P) for a, n in spans]


def page_set(ranges: list[Range]) -> set[int]:
    return {p for off, n in ranges for p in range(off // P, (off + n) // P)}


def learn(**kw: list[Range] | int) -> list[Range]:
    args: dict[str, list[Range] | int] = {
        "previous": [],
        "faults": [],
        "present": [],
        "removed": [],
        "dirty": [],
        "cap_bytes": BIG,
    }
    args.update(kw)
    return learn_prefetch_map(**args)  # type: ignore[arg-type]


def test_union_of_faults_previous_map_and_dirty_pages() -> None:
    previous = pages((100, 10))
    got = learn(
        previous=previous,
        faults=pages((5, 2)),
        present=pages((5, 2), (100, 10), (300, 1)),
        dirty=pages((300, 1)),
    )
    assert page_set(got) == page_set(pages((5, 2), (100, 10), (300, 1)))


def test_previous_map_survives_a_resume_without_faults() -> None:
    # everything was prefetched: nothing faulted, nothing dirtied, all present
    previous = pages((40, 8), (2, 3))
    assert learn(previous=previous, present=pages((0, 64))) == previous


def test_previous_ranges_never_installed_are_dropped() -> None:
    got = learn(previous=pages((0, 4), (50, 4)), present=pages((0, 4)))
    assert got == pages((0, 4))


def test_touched_first_in_first_touch_order_then_untouched_in_old_order() -> None:
    previous = pages((10, 1), (20, 1), (30, 1), (40, 1))
    got = learn(
        previous=previous,
        faults=pages((90, 1), (70, 1)),  # first-touch order, not offset order
        present=pages((10, 1), (20, 1), (30, 1), (40, 1), (70, 1), (90, 1), (95, 1)),
        dirty=pages((95, 1), (30, 1)),
    )
    # faults, then dirtied parts of the old map (old order), then other dirty
    # memory, then the old map's untouched ranges in their old order
    assert got == pages((90, 1), (70, 1), (30, 1), (95, 1), (10, 1), (20, 1), (40, 1))


def test_each_byte_once_and_neighbours_merge() -> None:
    got = learn(
        previous=pages((0, 8)),
        faults=pages((4, 8), (12, 2)),
        present=pages((0, 14)),
        dirty=pages((0, 14)),
    )
    assert got == pages((4, 10), (0, 4))


def test_cap_drops_the_oldest_untouched_first() -> None:
    # two pauses: A touched at the first, B at the second; at the third only C
    first = learn(faults=pages((0, 4)), present=pages((0, 4)))
    everything = pages((0, 4), (10, 4), (20, 4))
    second = learn(previous=first, faults=pages((10, 4)), present=everything)
    assert second == pages((10, 4), (0, 4))
    third = learn(previous=second, faults=pages((20, 4)), present=everything, cap_bytes=10 * P)
    # C, then B (untouched for one pause), then what is left of A (for two)
    assert third == pages((20, 4), (10, 4), (0, 2))


def test_cap_below_the_faults_keeps_the_first_touched() -> None:
    got = learn(faults=pages((9, 3), (1, 3)), present=pages((0, 16)), cap_bytes=4 * P)
    assert got == pages((9, 3), (1, 1))


def test_removed_memory_never_comes_back() -> None:
    got = learn(
        previous=pages((0, 16)),
        faults=pages((20, 4)),
        present=pages((0, 16), (20, 4)),
        removed=pages((2, 2), (21, 1), (30, 2)),
        dirty=pages((30, 2), (40, 1)),
    )
    assert page_set(got) == page_set(pages((0, 2), (4, 12), (20, 1), (22, 2), (40, 1)))
    assert got[:2] == pages((20, 1), (22, 2))  # the faults keep their place


spans = st.lists(st.tuples(st.integers(0, 200), st.integers(1, 20)), max_size=12)


@given(spans, spans, spans, spans, spans, st.integers(0, 300))
def test_properties(
    previous: list[tuple[int, int]],
    faults: list[tuple[int, int]],
    present: list[tuple[int, int]],
    removed: list[tuple[int, int]],
    dirty: list[tuple[int, int]],
    cap: int,
) -> None:
    ins = {k: pages(*v) for k, v in {"previous": previous, "faults": faults, "present": present,
           "removed": removed, "dirty": dirty}.items()}  # fmt: skip
    got = learn(**ins, cap_bytes=cap * P)  # type: ignore[arg-type]
    want = page_set(ins["faults"]) | page_set(ins["dirty"])
    want |= page_set(ins["previous"]) & page_set(ins["present"])
    want -= page_set(ins["removed"])
    seen = [p for off, n in got for p in range(off // P, (off + n) // P)]
    assert len(seen) == len(set(seen))  # each page once
    assert all(n > 0 for _, n in got)
    assert set(seen) <= want
    assert len(seen) == min(cap, len(want))
    for (a, n), (b, _) in itertools.pairwise(got):
        assert a + n != b  # neighbours in order and in memory are merged


def test_prefetch_map_codec_matches_the_construct_layout() -> None:
    """The struct-packed codec writes and reads exactly PrefetchV1's bytes."""
    rng = random.Random(5)
    ranges = [(rng.randrange(1 << 30) * 4096, rng.randrange(1, 64) * 4096) for _ in range(3000)]
    fields = {"count": len(ranges), "ranges": [{"offset": o, "length": n} for o, n in ranges]}
    body = PrefetchV1.build({**fields, "crc32c": 0})[:-4]
    reference = body + crc32c(body).to_bytes(4, "little")
    assert encode_prefetch_map(ranges) == reference
    assert decode_prefetch_map(reference) == ranges
    assert decode_prefetch_map(encode_prefetch_map([])) == []
    bad_version = bytearray(reference)
    bad_version[8] = 2
    bad_version[-4:] = crc32c(bytes(bad_version[:-4])).to_bytes(4, "little")
    with pytest.raises(HeaderError, match="prefetch map"):
        decode_prefetch_map(bytes(bad_version))
