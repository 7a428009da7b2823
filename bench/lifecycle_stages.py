"""The stage table of bench/lifecycle.py (``--stages``): who owns the time of each operation.

One rep on a fresh 256 MiB sandbox (fcsim): create; 50 % of memory dirtied
and a Full pause; then twice: resume, 10 % dirtied, Diff pause; then a resume
of the 3-generation chain.  Each operation's ``timings`` record (the daemon's
own stage bookkeeping, wrennd/sandbox/timing.py) is kept: the medians over
the reps of the total and of the daemon, vmm and guest shares, and of every
stage.  The Diff row is the second Diff pause (generation 2).

With ``--baseline DIR`` (a checkout of an older wrennd with its native modules
built) the reps alternate between that tree and this one, each rep in a child
process of its own (the same script, ``PYTHONPATH`` pointing at the tree), so
both see the same machine load; the table prints both side by side with the
candidate/baseline ratio of the daemon's share.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

OPS = ("create", "pause_full", "pause_diff_10pct", "resume_3gen")
OWNERS = ("daemon", "vmm", "guest")


async def one_rep(mgr: Any, memory_mib: int, control: Any) -> dict[str, Any]:
    """The timings records of one rep (see the module doc)."""
    out: dict[str, Any] = {}
    info = await mgr.create("base", memory_mib=memory_mib)
    sid = info["id"]
    out["create"] = info["timings"]["create"]
    await control(info, "dirty", fraction=0.5, seed=1)
    out["pause_full"] = (await mgr.pause(sid))["timings"]["pause"]
    for n in range(2):
        info = await mgr.resume(sid)
        await control(info, "dirty", fraction=0.10, seed=10 + n)
        out["pause_diff_10pct"] = (await mgr.pause(sid))["timings"]["pause"]
    resumed = await mgr.resume(sid)
    assert resumed["generation"] == 2, resumed["generation"]
    out["resume_3gen"] = resumed["timings"]["resume"]
    await mgr.destroy(sid)
    return out


def summary(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per operation: total, owners' shares, and each stage's charged ms."""
    out: dict[str, Any] = {}
    for op in OPS:
        records = [r[op] for r in reps]
        row: dict[str, Any] = {
            "total_ms": statistics.median(r["total_ms"] for r in records),
            **{o: statistics.median(r["owners"][o] for r in records) for o in OWNERS},
        }
        names = [s["name"] for s in records[0]["stages"]]
        stage_ms = {}
        for name in names:
            vals = [next((s["ms"] for s in r["stages"] if s["name"] == name), 0.0) for r in records]
            stage_ms[name] = statistics.median(vals)
        row["stages"] = stage_ms
        row["owner_of"] = {s["name"]: s["owner"] for s in records[0]["stages"]}
        out[op] = row
    return out


def child(tree: Path | None, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run ``--stages-child`` reps in a child process importing wrennd from ``tree``."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    argv = [sys.executable, str(Path(__file__).with_name("lifecycle.py")), "--stages-child",
            "--reps", "1", "--memory-mib", str(args.memory_mib)]  # fmt: skip
    done = subprocess.run(argv, env=env, check=True, capture_output=True, text=True)
    reps: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return reps


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Alternate baseline and candidate reps, one child process each."""
    base: list[dict[str, Any]] = []
    cand: list[dict[str, Any]] = []
    for n in range(args.reps):
        base += child(args.baseline, args)
        cand += child(None, args)
        print(f"rep {n + 1}/{args.reps} done", file=sys.stderr)
    result = {"memory_mib": args.memory_mib, "reps": args.reps, "loadavg": os.getloadavg(),
              "baseline_tree": str(args.baseline), "baseline": summary(base),
              "candidate": summary(cand)}  # fmt: skip
    result["daemon_ratio"] = {
        op: result["candidate"][op]["daemon"] / result["baseline"][op]["daemon"] for op in OPS
    }
    return result


def table(result: dict[str, Any]) -> str:
    """The stage table: per operation the shares (baseline | candidate), then the stages."""
    lines = [f"stage table, fcsim, {result['memory_mib']} MiB, medians of {result['reps']}"
             f" (loadavg {' '.join(f'{x:.1f}' for x in result['loadavg'])})"]  # fmt: skip
    runs = [k for k in ("baseline", "candidate") if k in result]
    head = "".join(f"{k:>34}" for k in runs)
    lines.append(f"{'':22}{head}")
    cols = "".join(f"{'total':>9}{'daemon':>9}{'vmm':>8}{'guest':>8}" for _ in runs)
    lines.append(f"{'operation':22}{cols}")
    for op in OPS:
        cells = "".join(
            f"{result[k][op]['total_ms']:9.1f}{result[k][op]['daemon']:9.1f}"
            f"{result[k][op]['vmm']:8.1f}{result[k][op]['guest']:8.1f}"
            for k in runs
        )
        ratio = result.get("daemon_ratio", {}).get(op)
        lines.append(f"{op:22}{cells}" + (f"  daemon x{ratio:.2f}" if ratio else ""))
    lines.append("")
    lines.append("stages (median ms on the critical path; owner)")
    for op in OPS:
        lines.append(f"  {op}")
        owner_of: dict[str, str] = {}
        for k in runs:
            owner_of.update(result[k][op]["owner_of"])
        for name, owner in owner_of.items():
            cells = "".join(f"{result[k][op]['stages'].get(name, 0.0):10.1f}" for k in runs)
            lines.append(f"    {name:18}{owner:8}{cells}")
    return "\n".join(lines)
