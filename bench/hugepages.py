#!/usr/bin/env python3
"""4 KiB against 2 MiB guest memory (memory_backing) under the real manager, side by side.

Runs as root against a test bed (wrennd_sim.network_testbed), a btrfs state
dir in a loop file and fcsim, never the machine's own network.  It adds the
2 MiB pages it needs to vm.nr_hugepages and takes them back at the end.  For
each backing, alternating rep by rep on one sandbox each:

- create (to a healthy agent), and a Full pause with half of memory written;
- resume without prefetch, then touching a working set (--ws-mib, sequential,
  then as many pages at random over all of memory): demand faults and time;
- a Diff pause after writing --diff-pages pages at random: its time and the
  bytes of the new generation (4 KiB blocks either way).

    .venv/bin/python bench/hugepages.py [--memory-mib 256] [--reps 5]
                                        [--ws-mib 64] [--diff-pages 256]
                                        [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scratch import control, emit, scratch_manager, timed

from wrennd.rpc import views
from wrennd.sandbox.hugepages import NR_HUGEPAGES, pages_of
from wrennd.snapshot.store import read_header
from wrennd_sim.inproc import InProcess

PAGE = 4096
BACKINGS = ("4k", "2m")


@contextlib.contextmanager
def huge_pages(count: int) -> Iterator[None]:
    """``count`` more pages in the 2 MiB pool while the benchmark runs (given back by count)."""
    before = int(NR_HUGEPAGES.read_text())
    NR_HUGEPAGES.write_text(str(before + count))
    added = int(NR_HUGEPAGES.read_text()) - before
    try:
        if added < count:
            raise SystemExit(f"the kernel added only {added} of {count} 2 MiB pages")
        yield
    finally:
        NR_HUGEPAGES.write_text(str(max(0, int(NR_HUGEPAGES.read_text()) - added)))


def faults(mgr: InProcess) -> int:
    return views.uffd_totals(mgr.service)["faults"]


async def touch(mgr: InProcess, info: dict[str, Any], pages: int, order: str) -> dict[str, float]:
    f0 = faults(mgr)
    got = await control(info, "touch", count=pages, order=order, arg=7)
    return {"ms": float(got["seconds"]) * 1e3, "faults": faults(mgr) - f0}


async def one_rep(mgr: InProcess, sid: str, args: argparse.Namespace, n: int) -> dict[str, float]:
    ws = (args.ws_mib << 20) // PAGE
    t_resume, info = await timed(lambda: mgr.resume(sid, prefetch=False))
    seq = await touch(mgr, info, ws, "sequential")
    await mgr.pause(sid)
    info = await mgr.resume(sid, prefetch=False)
    rnd = await touch(mgr, info, ws, "random")
    await control(info, "touch", count=args.diff_pages, order="random", arg=100 + n, write=True)
    t_diff, _ = await timed(lambda: mgr.pause(sid))
    header = read_header(mgr.service.paths(sid).snapshot_dir)
    newest = header.generations.index(header.build_id)
    return {
        "resume_ms": t_resume * 1e3,
        "touch_seq_ms": seq["ms"],
        "faults_seq": seq["faults"],
        "touch_random_ms": rnd["ms"],
        "faults_random": rnd["faults"],
        "pause_diff_ms": t_diff * 1e3,
        "diff_generation_bytes": sum(e.length for e in header.mapping if e.source == newest),
    }


async def measure(mgr: InProcess, args: argparse.Namespace) -> dict[str, Any]:
    samples: dict[str, dict[str, list[float]]] = {b: {} for b in BACKINGS}
    sids = {}
    for backing in BACKINGS:
        t_create, info = await timed(
            functools.partial(
                mgr.create, "base", memory_mib=args.memory_mib, memory_backing=backing
            )
        )
        await control(info, "dirty", fraction=0.5, seed=1)
        t_full, _ = await timed(functools.partial(mgr.pause, info["id"]))
        sids[backing] = info["id"]
        samples[backing] = {"create_ms": [t_create * 1e3], "pause_full_ms": [t_full * 1e3]}
    for n in range(args.reps):
        for backing in BACKINGS:  # alternating: both see the same load
            for key, value in (await one_rep(mgr, sids[backing], args, n)).items():
                samples[backing].setdefault(key, []).append(value)
    for sid in sids.values():
        await mgr.destroy(sid)
    medians = {b: {k: statistics.median(v) for k, v in s.items()} for b, s in samples.items()}
    ratios = {
        k: medians["2m"][k] / medians["4k"][k] if medians["4k"][k] else None for k in medians["4k"]
    }
    return {
        "memory_mib": args.memory_mib,
        "reps": args.reps,
        "ws_mib": args.ws_mib,
        "diff_pages": args.diff_pages,
        "medians": medians,
        "ratio_2m_over_4k": ratios,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with huge_pages(pages_of(args.memory_mib) + 8):
        # no collapse in the middle of a measurement
        async with scratch_manager("h", max_generations=1000) as mgr:
            return await measure(mgr, args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-mib", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--ws-mib", type=int, default=64)
    parser.add_argument("--diff-pages", type=int, default=256)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    emit(asyncio.run(run(args)), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
