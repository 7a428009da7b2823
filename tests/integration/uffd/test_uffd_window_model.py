"""The fault window against a model, through the real kernel uffd.

Hypothesis builds random snapshot chains the way wrennd builds them (a Full
generation of data and zero runs, then up to 11 Diff generations of scattered
dirty pages, some dirtied to zeros) over 1-3 handshake regions, and random
sequences of reads, writes and discards (MADV_DONTNEED: UFFD_EVENT_REMOVE).
This process plays the VMM: it maps and registers the memory itself and
touches it with the GIL released while the engine's threads serve it.  After
every operation the kernel's page tables (/proc/self/pagemap) are compared
with the model: a fault installs pages only inside its window and region,
never a page that was given back by REMOVE (the faulting one excepted, as
zeros); every byte read is the model's.
"""

from __future__ import annotations

import itertools
import os
import random
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wrennd.uffd.engine import SOURCE_ZERO, Engine, MapEntry
from wrennd_sim.uffd_peer import UffdGuest

pytestmark = pytest.mark.uffd
P = os.sysconf("SC_PAGE_SIZE")
ZERO = -1
T = TypeVar("T")


@dataclass
class Chain:
    sizes: list[int]  # region sizes in pages, memory-file order
    pages: list[bytes] = field(repr=False)  # what each page reads as
    entries: list[MapEntry] = field(repr=False)
    generations: list[bytes] = field(repr=False)


@dataclass
class Case:
    chain: Chain
    batch_pages: int
    window_pages: int
    ops: list[tuple[str, int, int]] = field(default_factory=list)


def build_chain(rng: random.Random, npages: int, ngen: int, sizes: list[int]) -> Chain:
    gens = [bytearray(os.urandom(npages * P)) for _ in range(ngen)]
    source = []
    while len(source) < npages:  # the Full image: runs of data and zero pages
        source += [0 if rng.random() < 0.6 else ZERO] * rng.randint(1, 24)
    source = source[:npages]
    for g in range(1, ngen):  # Diffs: scattered single pages, a few dirtied to zeros
        for p in rng.sample(range(npages), max(1, npages * rng.randint(2, 15) // 100)):
            source[p] = ZERO if rng.random() < 0.1 else g
    pages = [
        bytes(P) if s == ZERO else bytes(gens[s][p * P : (p + 1) * P]) for p, s in enumerate(source)
    ]
    entries: list[MapEntry] = []
    for p, s in enumerate(source):
        src = SOURCE_ZERO if s == ZERO else s
        if entries and entries[-1].source == src:
            last = entries.pop()
            entries.append(MapEntry(last.offset, last.length + P, last.storage_offset, src))
        else:
            entries.append(MapEntry(p * P, P, 0 if s == ZERO else p * P, src))
    return Chain(sizes, pages, entries, [bytes(g) for g in gens])


@st.composite
def cases(draw: st.DrawFn) -> Case:
    npages = draw(st.integers(24, 160))
    ngen = draw(st.integers(1, 12))
    cuts = sorted(draw(st.sets(st.integers(1, npages - 1), max_size=2)))
    bounds = [0, *cuts, npages]
    sizes = [b - a for a, b in itertools.pairwise(bounds)]
    chain = build_chain(random.Random(draw(st.integers(0, 2**32))), npages, ngen, sizes)
    batch = draw(st.sampled_from([1, 2, 4, 8]))
    window = batch * draw(st.sampled_from([1, 2, 4, 8, 16]))
    page = st.integers(0, npages - 1)
    op = st.one_of(
        st.tuples(st.just("read"), page, st.just(1)),
        st.tuples(st.just("write"), page, st.just(1)),
        st.tuples(st.just("discard"), page, st.integers(1, 8)),
        st.tuples(st.just("scan"), page, st.integers(2, 48)),  # a sequential stream
    )
    return Case(chain, batch, window, draw(st.lists(op, max_size=30)))


def present_pages(guest: UffdGuest) -> set[int]:
    """Memory pages the kernel has mapped, from /proc/self/pagemap (bit 63)."""
    out = set()
    with open("/proc/self/pagemap", "rb") as f:
        for m, r in zip(guest.memories, guest.regions, strict=True):
            f.seek(m.address // P * 8)
            words = struct.unpack(f"<{m.size // P}Q", f.read(m.size // P * 8))
            out |= {r.offset // P + i for i, w in enumerate(words) if w >> 63}
    return out


def units(ranges: list[tuple[int, int]]) -> set[int]:
    return {u for off, n in ranges for u in range(off // P, (off + n) // P)}


class Model:
    def __init__(
        self, case: Case, guest: UffdGuest, engine: Engine, pool: ThreadPoolExecutor
    ) -> None:
        self.case, self.guest, self.engine, self.pool = case, guest, engine, pool
        self.content = list(case.chain.pages)
        self.removed: set[int] = set()
        starts = [0]
        for s in case.chain.sizes:
            starts.append(starts[-1] + s)
        self.region_of = {p: (a, b) for a, b in itertools.pairwise(starts) for p in range(a, b)}

    def call(self, fn: Callable[[], T]) -> T:
        """Touch guest memory from a worker: a fault the engine fails to serve
        blocks it (until the uffd is closed), not the test."""
        try:
            return self.pool.submit(fn).result(timeout=10)
        except FutureTimeout:
            pytest.fail(f"a fault was not served; engine: {self.engine.stats()}")

    def settled(self) -> set[int]:
        """Present pages once the engine has finished every fault it has read:
        the faulting thread wakes before the rest of its window is installed."""
        for _ in range(100000):
            s = self.engine.stats()
            if s.lat_count == s.faults:
                return present_pages(self.guest)
            time.sleep(0.0001)
        pytest.fail(f"the engine did not finish its faults: {self.engine.stats()}")

    def fault(self, page: int, write: bool) -> None:
        before = self.settled()
        if write:
            data = struct.pack("<Q", page) + self.content[page][8:]
            self.call(lambda: self.guest.write(page * P, data[:8]))
            if page in self.removed:
                data = struct.pack("<Q", page) + bytes(P - 8)
            self.content[page] = data
        else:
            assert self.call(lambda: self.guest.read(page * P, P)) == self.content[page], page
        new = self.settled() - before
        assert page in before | new
        lo, hi = self.region_of[page]
        base = page - page % self.case.batch_pages
        assert all(lo <= u < hi for u in new), f"window left region [{lo},{hi}): {sorted(new)}"
        assert all(base <= u < base + self.case.window_pages for u in new), sorted(new)
        assert not (new & self.removed) - {page}, f"removed pages installed: {sorted(new)}"
        self.removed.discard(page)

    def discard(self, page: int, n: int) -> None:
        _, hi = self.region_of[page]
        n = min(n, hi - page)
        self.call(lambda: self.guest.discard(page * P, n * P))
        for p in range(page, page + n):
            self.content[p] = bytes(P)
            self.removed.add(p)

    def run(self) -> None:
        engine = self.engine
        for kind, page, n in self.case.ops:
            if kind == "discard":
                self.discard(page, n)
            elif kind == "scan":
                for p in range(page, min(page + n, len(self.content))):
                    self.fault(p, False)
            else:
                self.fault(page, kind == "write")
            assert units(engine.present()) == self.settled()
            assert units(engine.removed()) == self.removed
        everything = self.call(lambda: self.guest.read(0, len(self.content) * P))
        assert everything == b"".join(self.content)
        assert engine.stats().eexist == 0  # never asked to install a present page
        assert engine.stats().stop_error == 0


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=cases())
def test_window_against_model(tmp_path: Path, case: Case) -> None:
    chain = case.chain
    paths = []
    for i, g in enumerate(chain.generations):
        paths.append(tmp_path / f"gen{i}")
        paths[-1].write_bytes(g)
    npages = len(chain.pages)
    engine = Engine(
        memory_size=npages * P,
        page_size=P,
        entries=chain.entries,
        sources=paths,
        batch_bytes=case.batch_pages * P,
        window_max_bytes=case.window_pages * P,
    )
    pool = ThreadPoolExecutor(1)
    with engine, UffdGuest([s * P for s in chain.sizes]) as guest:
        assert guest.uffd is not None
        fd = os.dup(guest.uffd.fd)
        try:
            engine.start(fd, guest.regions)
        except BaseException:
            os.close(fd)
            raise
        try:
            Model(case, guest, engine, pool).run()
        finally:
            engine.stop()
    # both uffd fds are closed now: a worker blocked on a fault has been woken
    pool.shutdown()
