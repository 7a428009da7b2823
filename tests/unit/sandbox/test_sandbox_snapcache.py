"""The cache of opened snapshots: a hit while the files are the same ones, a fresh open
when the header or prefetch map was replaced or a file it named went away."""

from __future__ import annotations

import os
from pathlib import Path

from wrennd.sandbox.snapcache import OpenedSnapshots
from wrennd.snapshot.checksums import store_checksum_path
from wrennd.snapshot.ingest import ingest_diff, ingest_full
from wrennd.snapshot.prefetch import write_prefetch_map
from wrennd.snapshot.store import read_header

BS = 4096
PAGES = 32


def write_memfile(path: Path, values: dict[int, int], full: bool) -> None:
    """A memfile of PAGES pages, page p filled with byte values[p] (Full: written whole)."""
    with path.open("wb") as f:
        f.truncate(PAGES * BS)
        for p, v in values.items():
            f.seek(p * BS)
            f.write(bytes([v]) * BS)
        if full:
            f.seek(3 * BS)
            f.write(bytes(BS))
    os.chmod(path, 0o600)


def test_hits_and_misses(tmp_path: Path) -> None:
    store, snap = tmp_path / "store", tmp_path / "s"
    write_memfile(tmp_path / "full.mem", {0: 1, 1: 2}, full=True)
    ingest_full(tmp_path / "full.mem", snap, store)
    cache = OpenedSnapshots()
    first = cache.open(snap, store)
    assert cache.open(snap, store) is first and (cache.hits, cache.misses) == (1, 1)

    write_prefetch_map(snap, [(0, BS)])  # replaced by rename: a new file
    second = cache.open(snap, store)
    assert second is not first and second.prefetch == ((0, BS),)

    write_memfile(tmp_path / "diff.mem", {1: 9}, full=False)
    ingest_diff(tmp_path / "diff.mem", snap, snap, store)  # a new header
    third = cache.open(snap, store)
    assert third is not second and third.generation == 1
    assert cache.open(snap, store) is third

    # A checksum file removed (as after a repair): opened again, now without it.
    gen = read_header(snap).generations[0]
    store_checksum_path(store, gen).unlink()
    fourth = cache.open(snap, store)
    assert fourth is not third and fourth.checksum_paths[0] is None

    cache.forget(snap)
    assert cache.open(snap, store) is not fourth
