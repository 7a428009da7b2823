#!/usr/bin/env python3
"""Memory sharing between clones (KSM): total PSS of the VMMs without and with merging,
and ksmd's CPU, from one run on the same clones.

Runs as root against a test bed (wrennd_sim.network_testbed) and a btrfs state dir
in a loop file, with the real manager on fcsim and ``ksm = "clones"``. A template
of --memory-mib whose guest wrote --touch-mib of distinct data; --clones clones of
it, each touching those pages (UFFDIO_COPY'd: identical copies). The bench plays
the host's admin (the daemon does not manage ksmd here): with ksmd stopped it
measures the VMMs' PSS (smaps_rollup) - the "without" column; then it runs ksmd at
the rate the daemon would pick for a --scan-period-s scan and waits until merging
stops growing - the "with" column, ksmd's CPU seconds and the time to 80 % merged.
The host's ksmd knobs are put back at the end.

    .venv/bin/python bench/ksm_bench.py [--clones 10] [--memory-mib 256]
        [--touch-mib 64] [--scan-period-s 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from scratch import control, emit, scratch_manager

from wrennd.sandbox.sharing import KsmSettings, pages_to_scan
from wrennd.vm import ksm
from wrennd_sim.inproc import InProcess
from wrennd_sim.ksm_pages import guest_ksm_pages

PAGE = 4096
CHUNK = 4 << 20
SETTLE_POLLS = 4  # merging has stopped growing after this many polls without gain
DEADLINE_S = 600.0


def pss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def pss_column(pids: list[int]) -> dict[str, float]:
    per = [pss_bytes(pid) / (1 << 20) for pid in pids]
    return {"total_mib": round(sum(per), 1), "median_per_vmm_mib": round(statistics.median(per), 1)}


async def make_clones(mgr: InProcess, args: argparse.Namespace) -> list[dict[str, Any]]:
    src = await mgr.create("base", memory_mib=args.memory_mib)
    for offset in range(0, args.touch_mib << 20, CHUNK):
        data = base64.b64encode(os.urandom(CHUNK)).decode()
        await control(src, "write", offset=offset, data=data)
    await mgr.create_template(src["id"], "ksm-bench")
    await mgr.destroy(src["id"])
    clones = [await mgr.create(template="ksm-bench") for _ in range(args.clones)]
    for clone in clones:
        count = (args.touch_mib << 20) // PAGE
        await control(clone, "touch", count=count, order="sequential", arg=0, write=False)
    return clones


async def merge(mgr: InProcess, args: argparse.Namespace, identical: int) -> dict[str, Any]:
    """Run ksmd at the daemon's rate until merging stops growing; what it took."""
    settings = KsmSettings("clones", True, args.scan_period_s, args.max_pages_to_scan)
    rate = pages_to_scan(settings, [args.memory_mib] * args.clones)
    ksmd = ksm.find_ksmd()
    assert ksmd is not None, "no ksmd thread"
    cpu0, t0 = ksm.cpu_seconds(ksmd) or 0.0, time.monotonic()
    ksm.write_knobs({"sleep_millisecs": 20, "pages_to_scan": rate, "run": 1})
    best, still, to_80 = -1, 0, None
    while still < SETTLE_POLLS and time.monotonic() - t0 < DEADLINE_S:
        await asyncio.sleep(1.0)
        stats = mgr.service.sharing.stats()  # what host.stats reports
        if to_80 is None and stats["merging_pages"] >= 0.8 * identical:
            to_80 = time.monotonic() - t0
        still = still + 1 if stats["merging_pages"] <= best else 0
        best = max(best, stats["merging_pages"])
    wall = time.monotonic() - t0
    cpu = (ksm.cpu_seconds(ksmd) or 0.0) - cpu0
    ksm.write_knobs({"run": 0})  # keep merged pages, stop scanning: measure PSS quietly
    return {
        "pages_to_scan": rate,
        "sleep_millisecs": 20,
        "seconds_to_80pct_by_host_stats": None if to_80 is None else round(to_80, 1),
        "seconds_until_settled": round(wall, 1),
        "ksmd_cpu_seconds": round(cpu, 2),
        "ksmd_cpu_share_of_a_core": round(cpu / wall, 2),
        "host_stats": {k: v for k, v in stats.items() if k != "vmms"},
        "identical_copied_pages": identical,
    }


async def measure(mgr: InProcess, args: argparse.Namespace) -> dict[str, Any]:
    ksm.write_knobs({"run": 0})
    clones = await make_clones(mgr, args)
    pids = [int(c["vmm"]["pid"]) for c in clones]
    identical = args.clones * ((args.touch_mib << 20) // PAGE)
    out: dict[str, Any] = {"clones": args.clones, "memory_mib": args.memory_mib}
    out["touch_mib"] = args.touch_mib
    out["pss_without_ksm"] = pss_column(pids)
    out["merge"] = await merge(mgr, args, identical)
    out["pss_with_ksm"] = pss_column(pids)
    # The kernel's page flags: how much of it is guest memory (host.stats counts every
    # merged page of the VMM process, its own heap included).
    guest = sum(guest_ksm_pages(pid, args.memory_mib << 20) for pid in pids)
    out["guest_ksm_pages"] = guest
    out["guest_merged_fraction"] = round(guest / identical, 3)
    without, with_ = out["pss_without_ksm"]["total_mib"], out["pss_with_ksm"]["total_mib"]
    out["pss_ratio_with_to_without"] = round(with_ / without, 3)
    out["pss_saved_mib"] = round(without - with_, 1)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    before = ksm.read_knobs()
    if (ksm.read_value("pages_shared") or 0) > 0:
        print("warning: the host already has merged pages; its counters add in", file=sys.stderr)
    try:
        async with scratch_manager("k", ksm=KsmSettings("clones")) as mgr:
            return await measure(mgr, args)
    finally:
        ksm.write_knobs(before)


def arguments() -> argparse.ArgumentParser:
    """Its options (also lifecycle.py --ksm's, which takes the defaults)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clones", type=int, default=10)
    parser.add_argument("--memory-mib", type=int, default=256)
    parser.add_argument("--touch-mib", type=int, default=64)
    parser.add_argument("--scan-period-s", type=int, default=2)
    parser.add_argument("--max-pages-to-scan", type=int, default=20000)
    parser.add_argument("--json", type=Path)
    return parser


def main() -> int:
    args = arguments().parse_args()
    emit(asyncio.run(run(args)), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
