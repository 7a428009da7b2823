"""Snapshot chains for bench/faultin.py, built the way wrennd's chains are built.

A Full image of realistic runs: data and zero runs alternate, each run's length
log-uniform between 1 and 512 pages (about half the memory is data); the
generation file holds the data at its own offset and zero runs as holes, as
ingest leaves it after punching zero blocks.  Then Diff generations whose dirty
pages are SCATTERED SINGLE PAGES, 5 % of memory per generation, each Diff a
sparse file with the pages at their own offsets (Firecracker's layout); the
mapping is the Full mapping with every Diff overlaid, as wrennd builds it.
"interleaved" is memory where every page is data or zeros at random, one
generation.  The flat file is what the chain reads as, written densely (zeros
as bytes), as Firecracker's own Full memfile is: the kernel-paging baseline.

Page contents come from a pool of random pages, so building 256 MiB with ten
Diffs stays quick.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from wrennd.uffd.engine import SOURCE_ZERO, MapEntry
from wrennd.uffd.server import SnapshotMemory

ZERO = -1
POOL_PAGES = 2048
DIRTY_SHARE = 0.05


def full_layout(rng: random.Random, npages: int, interleaved: bool) -> list[int]:
    """Source of each page of the Full image: 0 (data) or ZERO."""
    if interleaved:
        return [0 if rng.random() < 0.5 else ZERO for _ in range(npages)]
    src: list[int] = []
    data = rng.random() < 0.5
    while len(src) < npages:
        src += [0 if data else ZERO] * int(2 ** rng.uniform(0, 9))
        data = not data
    return src[:npages]


class Pages:
    """Deterministic page contents per (generation, page)."""

    def __init__(self, page: int) -> None:
        self.page = page
        self.pool = os.urandom(POOL_PAGES * page)

    def get(self, gen: int, p: int) -> bytes:
        i = (p * 7919 + gen * 104729) % POOL_PAGES
        return self.pool[i * self.page : (i + 1) * self.page]


def write_sparse(path: Path, size: int, pages: dict[int, bytes], page: int) -> None:
    """A sparse file of `size` bytes holding `pages` at their own offsets."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, size)
        run: list[bytes] = []
        start = prev = -2
        for p in sorted(pages):  # one pwrite per run of consecutive pages
            if p != prev + 1 and run:
                os.pwrite(fd, b"".join(run), start * page)
                run = []
            if not run:
                start = p
            run.append(pages[p])
            prev = p
        if run:
            os.pwrite(fd, b"".join(run), start * page)
        os.fsync(fd)
    finally:
        os.close(fd)


def entries_of(src: list[int], page: int) -> list[MapEntry]:
    out: list[MapEntry] = []
    for p, s in enumerate(src):
        source = SOURCE_ZERO if s == ZERO else s
        if out and out[-1].source == source:
            last = out.pop()
            out.append(MapEntry(last.offset, last.length + page, last.storage_offset, source))
        else:
            out.append(MapEntry(p * page, page, 0 if s == ZERO else p * page, source))
    return out


def build_chain(
    directory: Path, size: int, page: int, seed: int, diffs: int, interleaved: bool = False
) -> tuple[Path, SnapshotMemory, dict[str, float]]:
    """Write the generations and the flat image; return the flat path, the memory, facts."""
    rng = random.Random(seed)
    npages = size // page
    content = Pages(page)
    src = full_layout(rng, npages, interleaved)
    gens: list[dict[int, bytes]] = [{p: content.get(0, p) for p, s in enumerate(src) if s == 0}]
    for g in range(1, diffs + 1):
        dirty = rng.sample(range(npages), int(npages * DIRTY_SHARE))
        gens.append({p: content.get(g, p) for p in dirty})
        for p in dirty:
            src[p] = g
    paths = []
    for g, pages in enumerate(gens):
        paths.append(directory / f"chain-gen{g}")
        write_sparse(paths[-1], size, pages, page)
    flat = directory / "chain-flat"
    with open(flat, "wb") as f:
        zero = bytes(page)
        f.write(b"".join(zero if s == ZERO else gens[s][p] for p, s in enumerate(src)))
        os.fsync(f.fileno())
    entries = entries_of(src, page)
    facts = {
        "entries": len(entries),
        "data_share": sum(s != ZERO for s in src) / npages,
        "generations": diffs + 1,
    }
    return flat, SnapshotMemory(size, page, entries, paths), facts
