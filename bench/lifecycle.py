#!/usr/bin/env python3
"""Sandbox lifecycle timings under the real manager (fcsim VMs), side by side in one run.

Runs as root against a test bed (wrennd_sim.network_testbed) and a btrfs state
dir in a loop file (reflink layers), never the machine's own network.

- create: time to a running sandbox with a healthy agent;
- pause: the first (Full) and then Diff pauses at 1%, 10% and 50% of memory
  dirtied (fcsim control socket) since the resume, with their ratios to Full;
- resume to agent-ready with and without prefetch, alternating, each followed
  by touching the previous resume's working set (how long the guest waits for
  its memory), with the ratios.
- clone fan-out: a template from a paused sandbox, then 1, 5 and 20 clones
  created at once: wall time, per-clone median, clones per second.

    .venv/bin/python bench/lifecycle.py [--memory-mib 256] [--reps 3]
                                        [--fanout 1 5 20] [--json out.json]
                                        [--plot out.png]

--stages prints the stage table (bench/lifecycle_stages.py): the daemon, vmm and
guest shares of create, pause (Full, Diff at 10 %) and resume (3-generation
chain), medians of --reps (use 5), from each operation's ``timings`` record;
with --baseline DIR, alternating with an older wrennd tree, side by side.

--ksm reports the total PSS of ten clones' VMMs without and with KSM merging,
and ksmd's CPU seconds (bench/ksm_bench.py with its defaults, --memory-mib).

--cycles N measures only the prefetch map across pause/resume cycles: a
sandbox is created and paused (Full), then N times resumed, a stable working
set touched (--ws-mib, in --ws-order) and --new-pages pages never touched
before written at random, and paused again; once with prefetch and once
without, each on its own sandbox.  Per cycle: demand faults on the working
set and on the new pages (the engine's counters around each touch), the time
to touch them, and the prefetch map's size after the pause.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import lifecycle_stages
from scratch import control, scratch_manager, timed

from wrennd.rpc import views
from wrennd.snapshot import read_prefetch_map
from wrennd_sim.inproc import InProcess

PAGE = 4096


def stats(samples: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(samples) * 1e3, "min_ms": min(samples) * 1e3}


async def measure(mgr: InProcess, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"memory_mib": args.memory_mib, "reps": args.reps}
    creates, fulls, sids = [], [], []
    for _ in range(args.reps):
        t, info = await timed(lambda: mgr.create("base", memory_mib=args.memory_mib))
        creates.append(t)
        sids.append(info["id"])
        await control(info, "dirty", fraction=0.5, seed=1)
        fulls.append((await timed(lambda sid=info["id"]: mgr.pause(sid)))[0])
    out["create"] = stats(creates)
    out["pause_full_50pct_data"] = stats(fulls)
    for fraction in (0.01, 0.10, 0.50):
        samples = []
        for n, sid in enumerate(sids):
            info = await mgr.resume(sid)
            await control(info, "dirty", fraction=fraction, seed=10 + n)
            samples.append((await timed(lambda sid=sid: mgr.pause(sid)))[0])
        out[f"pause_diff_{round(fraction * 100)}pct"] = stats(samples)
    ws_pages = (args.memory_mib << 20) // PAGE // 4
    resume: dict[bool, list[float]] = {True: [], False: []}
    touch: dict[bool, list[float]] = {True: [], False: []}
    sid = sids[0]
    # Record a working set first: a resume without prefetch, a quarter of memory touched.
    info = await mgr.resume(sid, prefetch=False)
    await control(info, "touch", count=ws_pages, order="sequential", write=False)
    await mgr.pause(sid)
    for _ in range(args.reps):
        for prefetch in (True, False):
            t, info = await timed(lambda p=prefetch: mgr.resume(sid, prefetch=p))
            resume[prefetch].append(t)
            touched = await control(info, "touch", count=ws_pages, order="sequential")
            touch[prefetch].append(float(touched["seconds"]))
            await mgr.pause(sid)
    out["resume_prefetch"] = stats(resume[True])
    out["resume_no_prefetch"] = stats(resume[False])
    out["touch_working_set_prefetch"] = stats(touch[True])
    out["touch_working_set_no_prefetch"] = stats(touch[False])
    out["working_set_mib"] = ws_pages * PAGE >> 20
    full = out["pause_full_50pct_data"]["median_ms"]
    out["ratios"] = {
        **{
            f"diff_{p}pct_over_full": out[f"pause_diff_{p}pct"]["median_ms"] / full
            for p in (1, 10, 50)
        },
        "resume_prefetch_over_no_prefetch": statistics.median(resume[True])
        / statistics.median(resume[False]),
        "touch_prefetch_over_no_prefetch": statistics.median(touch[True])
        / statistics.median(touch[False]),
    }
    out["clone_fanout"] = await fanout(mgr, sid, args.fanout)
    for sid in sids:
        await mgr.destroy(sid)
    return out


async def one_cycle(
    mgr: InProcess, sid: str, args: argparse.Namespace, n: int, prefetch: bool
) -> dict[str, Any]:
    ws_pages = (args.ws_mib << 20) // PAGE
    info = await mgr.resume(sid, prefetch=prefetch)
    f0 = views.uffd_totals(mgr.service)["faults"]
    ws = await control(info, "touch", count=ws_pages, order=args.ws_order, arg=1)
    f1 = views.uffd_totals(mgr.service)["faults"]
    # new pages: a fresh random order per cycle, written (they end up in the Diff)
    new = await control(info, "touch", count=args.new_pages, order="random", arg=1000 + n,
                        write=True)  # fmt: skip
    f2 = views.uffd_totals(mgr.service)["faults"]
    await mgr.pause(sid)
    await mgr.settled(sid)  # the map is written after the pause's answer
    pmap = read_prefetch_map(mgr.service.paths(sid).snapshot_dir)
    return {
        "cycle": n,
        "faults_ws": f1 - f0,
        "faults_new": f2 - f1,
        "demand_faults": f2 - f0,
        "touch_ms": (float(ws["seconds"]) + float(new["seconds"])) * 1e3,
        "touch_ws_ms": float(ws["seconds"]) * 1e3,
        "prefetch_map_mib": sum(n for _, n in pmap) / (1 << 20),
    }


async def cycles(mgr: InProcess, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"memory_mib": args.memory_mib, "ws_mib": args.ws_mib,
                           "ws_order": args.ws_order, "new_pages": args.new_pages,
                           "prefetch_max_mib": args.prefetch_max_mib,
                           "loadavg": os.getloadavg()}  # fmt: skip
    for prefetch in (True, False):
        info = await mgr.create("base", memory_mib=args.memory_mib)
        sid = info["id"]
        await mgr.pause(sid)  # Full: the first resume has no prefetch map
        rows = [await one_cycle(mgr, sid, args, n, prefetch) for n in range(1, args.cycles + 1)]
        for r in rows:
            print(f"prefetch={prefetch} {r}", file=sys.stderr)
        first, later = rows[0], rows[1:]
        best = min(r["touch_ms"] for r in rows)
        out["prefetch" if prefetch else "no_prefetch"] = {
            "cycles": rows,
            "later_faults_over_first_max": max(r["demand_faults"] for r in later)
            / max(1, first["demand_faults"]),
            "later_ws_faults_over_first_max": max(r["faults_ws"] for r in later)
            / max(1, first["faults_ws"]),
            "touch_over_best_max": max(r["touch_ms"] for r in later) / best,
        }
        await mgr.destroy(sid)
    on = out["prefetch"]
    out["goals"] = {
        "later_demand_faults_le_10pct_of_first": on["later_faults_over_first_max"] <= 0.10,
        "later_touch_within_20pct_of_best": on["touch_over_best_max"] <= 1.20,
    }
    return out


async def fanout(mgr: InProcess, sid: str, sizes: list[int]) -> dict[str, Any]:
    """A template from a paused sandbox, then N clones created at once, for each N."""
    await mgr.create_template(sid, "bench")
    result: dict[str, Any] = {}
    for n in sizes:
        per_clone: list[float] = []

        async def one(per_clone: list[float] = per_clone) -> str:
            t, info = await timed(lambda: mgr.create(template="bench"))
            per_clone.append(t)
            return str(info["id"])

        wall, ids = await timed(lambda n=n: asyncio.gather(*(one() for _ in range(n))))
        result[str(n)] = {
            "wall_ms": wall * 1e3,
            "per_clone_median_ms": statistics.median(per_clone) * 1e3,
            "clones_per_s": n / wall,
        }
        await asyncio.gather(*(mgr.destroy(i) for i in ids))
    await mgr.delete_template("bench")
    return result


async def stage_reps(mgr: InProcess, args: argparse.Namespace) -> Any:
    reps = [await lifecycle_stages.one_rep(mgr, args.memory_mib, control) for _ in range(args.reps)]
    if args.stages_child:
        return reps
    result = {"memory_mib": args.memory_mib, "reps": args.reps, "loadavg": os.getloadavg(),
              "candidate": lifecycle_stages.summary(reps)}  # fmt: skip
    return result


async def run(args: argparse.Namespace) -> Any:
    settings = {
        "max_generations": 1000,  # no collapse in the middle of a measurement
        "prefetch_max_bytes": args.prefetch_max_mib << 20,
    }
    async with scratch_manager("l", **settings) as mgr:
        if args.stages_child or args.stages:
            return await stage_reps(mgr, args)
        return await (cycles(mgr, args) if args.cycles else measure(mgr, args))


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [
        "create",
        "pause_full_50pct_data",
        "pause_diff_1pct",
        "pause_diff_10pct",
        "pause_diff_50pct",
        "resume_prefetch",
        "resume_no_prefetch",
        "touch_working_set_prefetch",
        "touch_working_set_no_prefetch",
    ]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.barh(keys, [result[k]["median_ms"] for k in keys])
    ax.set_xlabel("median ms")
    ax.set_title(f"sandbox lifecycle, fcsim, {result['memory_mib']} MiB guest")
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-mib", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--fanout", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--cycles", type=int, default=0, help="cycles mode: this many cycles")
    parser.add_argument("--ws-mib", type=int, default=64)
    parser.add_argument("--ws-order", choices=["sequential", "random"], default="sequential")
    parser.add_argument("--new-pages", type=int, default=256)
    parser.add_argument(
        "--prefetch-max-mib", type=int, default=0,
        help="the prefetch_max_bytes setting, in MiB (default 0: the memory size)",
    )  # fmt: skip
    parser.add_argument("--stages", action="store_true", help="print the stage table")
    parser.add_argument(
        "--ksm", action="store_true",
        help="the VMMs' total PSS without and with KSM, and ksmd's CPU (bench/ksm_bench.py)",
    )  # fmt: skip
    parser.add_argument("--stages-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", type=Path, help="--stages: an older wrennd tree to compare")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    if args.ksm:
        # Imported here: --baseline's children run this file against an older wrennd.
        import ksm_bench

        ksm_args = ksm_bench.arguments().parse_args(["--memory-mib", str(args.memory_mib)])
        result = asyncio.run(ksm_bench.run(ksm_args))
    elif args.stages and args.baseline:
        result = lifecycle_stages.compare(args)
    else:
        result = asyncio.run(run(args))
    if args.stages_child:
        print(json.dumps(result))
        return 0
    text = json.dumps(result, indent=2)
    print(lifecycle_stages.table(result) if args.stages else text)
    if args.json:
        args.json.write_text(text + "\n")
    if args.plot and not args.cycles and not args.stages:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
