#!/usr/bin/env python3
"""Per-sandbox network setup and teardown time, and 20 setups at once vs one after another.

Runs as root against a test bed (a namespace playing the host, another the
outside world: wrennd_sim.network_testbed), never the machine's own network.

- cycles: N create/remove cycles of one slot, p50/p95/max of each;
- burst: 20 slots created one after another, then 20 created concurrently
  (asyncio.gather), alternating over R rounds; wall time of each and the
  sequential/concurrent ratio (>1 means concurrency helps).

    .venv/bin/python bench/network_bench.py [--cycles 50] [--burst 20] [--rounds 3]
                                            [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time

from wrennd.network.manager import NetworkManager
from wrennd.network.plan import Naming
from wrennd_sim.network_testbed import TestBed


def pct(samples: list[float], q: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank] * 1e3


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": pct(samples, 50),
        "p95_ms": pct(samples, 95),
        "max_ms": max(samples) * 1e3,
        "mean_ms": statistics.fmean(samples) * 1e3,
    }


async def cycles(m: NetworkManager, n: int) -> dict[str, object]:
    setup, teardown = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        await m.create(1)
        t1 = time.perf_counter()
        await m.remove(1)
        t2 = time.perf_counter()
        setup.append(t1 - t0)
        teardown.append(t2 - t1)
    return {"cycles": n, "setup": summary(setup), "teardown": summary(teardown)}


async def burst(m: NetworkManager, count: int, concurrent: bool) -> tuple[float, float]:
    slots = range(1, count + 1)
    t0 = time.perf_counter()
    if concurrent:
        await asyncio.gather(*(m.create(s) for s in slots))
    else:
        for s in slots:
            await m.create(s)
    t1 = time.perf_counter()
    if concurrent:
        await asyncio.gather(*(m.remove(s) for s in slots))
    else:
        for s in slots:
            await m.remove(s)
    return t1 - t0, time.perf_counter() - t1


async def bursts(m: NetworkManager, count: int, rounds: int) -> dict[str, object]:
    times: dict[str, list[float]] = {"sequential": [], "concurrent": []}
    removes: dict[str, list[float]] = {"sequential": [], "concurrent": []}
    for _ in range(rounds):  # alternate so drift (other load on the box) hits both
        for mode in ("sequential", "concurrent"):
            setup, teardown = await burst(m, count, mode == "concurrent")
            times[mode].append(setup)
            removes[mode].append(teardown)
    seq, conc = statistics.median(times["sequential"]), statistics.median(times["concurrent"])
    return {
        "sandboxes": count,
        "rounds": rounds,
        "sequential_setup_s": seq,
        "concurrent_setup_s": conc,
        "sequential_teardown_s": statistics.median(removes["sequential"]),
        "concurrent_teardown_s": statistics.median(removes["concurrent"]),
        "setup_speedup": seq / conc,
        "teardown_speedup": statistics.median(removes["sequential"])
        / statistics.median(removes["concurrent"]),
        "all_rounds": {"setup": times, "teardown": removes},
    }


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    bed = TestBed(f"wb{secrets.token_hex(2)}-")
    bed.build()
    try:
        m = NetworkManager(naming=Naming(prefix=bed.prefix), host_netns=bed.host_path)
        await m.start()
        await cycles(m, 3)  # warm-up: library loading, first-use caches
        return {
            "benchmark": "network",
            "per_sandbox": await cycles(m, args.cycles),
            "burst": await bursts(m, args.burst, args.rounds),
        }
    finally:
        bed.destroy()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=50)
    p.add_argument("--burst", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", help="also write the result to this file")
    args = p.parse_args()
    result = asyncio.run(main_async(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
