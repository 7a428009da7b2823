#!/usr/bin/env python3
"""Snapshot core benchmark: lookups, Full vs Diff ingest, collapse, in one run.

- lookups/s: random offsets resolved by the native binary search in a
  1M-entry mapping (one C call per batch, and per call from Python), plus the
  time to build and parse that header;
- Full ingest of a memfile (default 1 GiB, half of it zero blocks in random
  runs): zero scan, hole punching, move into the store, header commit;
- Diff ingest of a fresh sparse memfile of the same memory with 1% of its
  pages dirty (random pages, 1 in 20 dirtied to zeros) on top of that Full
  snapshot, and its ratio to the Full ingest (goal <= 0.05);
- collapse of the resulting two-generation chain (mapped bytes per second).

Every ingest includes the fsyncs the daemon does.  Prints JSON.

    .venv/bin/python bench/snapshot_bench.py [--size-mib 1024] [--dir /var/tmp] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from wrennd._native import ffi, lib
from wrennd.snapshot.chain import collapse
from wrennd.snapshot.header import Header, parse_header
from wrennd.snapshot.ingest import ingest_diff, ingest_full
from wrennd.snapshot.mapping import ZERO_SOURCE, Mapping

BLOCK = 4096


def bench_lookups(entries: int = 1 << 20, probes: int = 1 << 22) -> dict[str, Any]:
    """Lookups in a 1M-entry mapping with entries of 1..8 blocks over 8 generations."""
    rng = random.Random(1)
    rows, off = [], 0
    for i in range(entries):
        length = rng.randint(1, 8) * BLOCK
        src = ZERO_SOURCE if i % 5 == 0 else i % 8
        rows.append((off, length, src, 0 if src == ZERO_SOURCE else off))
        off += length
    mapping = Mapping.from_entries(rows)
    gens = tuple(uuid.UUID(int=g + 1) for g in range(8))
    header = Header(BLOCK, off, 7, gens[-1], gens[0], gens, mapping)
    t0 = time.perf_counter()
    data = header.to_bytes()
    t1 = time.perf_counter()
    parsed = parse_header(data)
    t2 = time.perf_counter()
    offsets = ffi.new("uint64_t[]", [rng.randrange(off) for _ in range(probes)])
    out = ffi.new("int64_t[]", probes)
    t3 = time.perf_counter()
    lib.wr_map_lookup_batch(parsed.mapping.entries, entries, offsets, probes, out)
    t4 = time.perf_counter()
    assert all(out[i] >= 0 for i in range(0, probes, 4099))
    n_py = 200_000
    t5 = time.perf_counter()
    for i in range(n_py):
        parsed.mapping.lookup(offsets[i])
    t6 = time.perf_counter()
    return {
        "entries": entries,
        "header_bytes": len(data),
        "header_build_s": t1 - t0,
        "header_parse_s": t2 - t1,
        "lookups_per_s_native_batch": probes / (t4 - t3),
        "lookups_per_s_from_python": n_py / (t6 - t5),
    }


def write_full_memfile(path: Path, size: int, rng: random.Random) -> int:
    """Memory of random-length data and zero runs (about half zero); returns zero bytes."""
    payload = os.urandom(64 * BLOCK)
    zero_bytes, off = 0, 0
    with path.open("wb") as f:
        while off < size:
            n = min(rng.randint(1, 64) * BLOCK, size - off)
            if rng.random() < 0.5:
                f.write(bytes(n))
                zero_bytes += n
            else:
                f.write(payload[:n])
            off += n
    return zero_bytes


def write_diff_memfile(path: Path, size: int, fraction: float, rng: random.Random) -> int:
    """A fresh sparse memfile with `fraction` of its pages written (Firecracker Diff)."""
    pages = rng.sample(range(size // BLOCK), int(size // BLOCK * fraction))
    payload = os.urandom(BLOCK)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        for i, p in enumerate(sorted(pages)):
            os.pwrite(fd, bytes(BLOCK) if i % 20 == 0 else payload, p * BLOCK)
    finally:
        os.close(fd)
    return len(pages) * BLOCK


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - t0, result


def bench_ingest(root: Path, size: int) -> dict[str, Any]:
    rng = random.Random(2)
    store = root / "store"
    full_mem, diff_mem = root / "full.mem", root / "diff.mem"
    zero_bytes = write_full_memfile(full_mem, size, rng)
    os.sync()  # the memfile's writeback is Firecracker's cost, not ingest's
    full_s, full_h = timed(ingest_full, full_mem, root / "full", store)
    dirty = write_diff_memfile(diff_mem, size, 0.01, rng)
    os.sync()
    diff_s, diff_h = timed(ingest_diff, diff_mem, root / "full", root / "diff", store)
    mapped = size - full_h.mapping.source_stats(len(full_h.generations))[1]
    collapse_s, _ = timed(collapse, root / "diff", store)
    return {
        "memory_bytes": size,
        "full": {
            "seconds": full_s,
            "zero_bytes": zero_bytes,
            "entries": len(full_h.mapping),
            "gib_per_s": size / full_s / (1 << 30),
        },
        "diff_1pct": {
            "seconds": diff_s,
            "dirty_bytes": dirty,
            "entries": len(diff_h.mapping),
            "dirty_mib_per_s": dirty / diff_s / (1 << 20),
        },
        "diff_to_full_ratio": diff_s / full_s,
        "diff_to_full_goal": 0.05,
        "collapse": {
            "seconds": collapse_s,
            "mapped_bytes": mapped,
            "mapped_gib_per_s": mapped / collapse_s / (1 << 30),
            "memory_gib_per_s": size / collapse_s / (1 << 30),
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="wr-snapbench-", dir=args.dir))
    try:
        result = {"lookup": bench_lookups(), "ingest": bench_ingest(root, args.size_mib << 20)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
