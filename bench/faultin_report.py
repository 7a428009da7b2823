"""The results of bench/faultin.py: its ratios against the issues' goals, the
markdown table and the plots.  Kept apart from the runs themselves so that
faultin.py holds only what measures."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from wrennd_sim import uffd_peer

PAGE = uffd_peer.BASE_PAGE_SIZE
MiB = 1 << 20
LEGACY = "mixed"  # the two-generation fixture's name in the rows
VERIFY_PAIR = ["engine", "engine-verify"]


def find(rows: list[dict[str, Any]], **kw: str) -> dict[str, Any]:
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()) and ("variant" in r) == ("variant" in kw):
            return r
    raise KeyError(kw)


def chain_ratios(rows: list[dict[str, Any]], fixture: str, cold: bool) -> dict[str, Any]:
    """Engine against kernel paging (warm, cold) and one page per fault, sequential read."""

    def secs(h: str, cache: str, pattern: str = "sequential", rw: str = "read") -> float:
        r = find(rows, fixture=fixture, handler=h, pattern=pattern, rw=rw, cache=cache)
        return float(r["seconds"])

    out: dict[str, Any] = {
        "vs_kernel_warm": secs("kernel", "warm") / secs("engine", "warm"),
        "vs_batch1": secs("engine-b1", "warm") / secs("engine", "warm"),
        "random_vs_kernel_warm": secs("kernel", "warm", "random")
        / secs("engine", "warm", "random"),
    }
    if cold:
        out["vs_kernel_cold"] = secs("kernel", "cold") / secs("engine", "cold")
    out["goals"] = {
        "ge_2x_kernel_warm": out["vs_kernel_warm"] >= 2,
        "ge_8x_batch1": out["vs_batch1"] >= 8,
    }
    if cold:
        out["goals"]["ge_2x_kernel_cold"] = out["vs_kernel_cold"] >= 2
    return out


def verify_cost(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """verify_pages against the same engine without it, per scenario run by both:
    the extra time as a fraction (0.10 = 10 % slower), from the medians of the
    (alternating, --verify-repeats) runs of each."""
    times: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        if r["handler"] in VERIFY_PAIR and "variant" not in r:
            key = "/".join(r[k] for k in ("fixture", "pattern", "rw", "cache"))
            times.setdefault(key, {}).setdefault(r["handler"], []).append(r["seconds"])
    cost = {
        key: round(statistics.median(t["engine-verify"]) / statistics.median(t["engine"]) - 1, 3)
        for key, t in times.items()
        if len(t) == 2
    }
    worst = max(cost.values(), default=0.0)
    typical = statistics.median(cost.values()) if cost else 0.0
    return {
        "by_scenario": cost,
        "median": typical,
        "max": worst,
        "goals": {"le_15pct": worst <= 0.15},
    }


def ratios(res: dict[str, Any]) -> dict[str, Any]:
    out = {} if res["verify_only"] else _ratios(res)
    out["verify_pages_cost"] = verify_cost(res["rows"])
    return out


def _ratios(res: dict[str, Any]) -> dict[str, Any]:
    rows = res["rows"]
    chains = {f: chain_ratios(rows, f, res["cold"]) for f in res["fixtures"]}
    if not any(r["fixture"] == LEGACY for r in rows):
        return {"chains": chains}
    w = {"cache": "warm", "fixture": LEGACY}
    b1 = find(rows, handler="engine-b1", pattern="random", rw="read", **w)
    mini = find(rows, handler="minimal", pattern="random", rw="read", **w)
    seq = find(rows, handler="engine", pattern="sequential", rw="read", **w)
    seq_b1 = find(rows, handler="engine-b1", pattern="sequential", rw="read", **w)
    off = find(rows, variant="prefetch-off")
    on = find(rows, variant="prefetch-on")
    serving = [r for r in rows if r["handler"] == "engine" and r.get("faults")]
    gbps = res["size_bytes"] / seq["seconds"] / 1e9
    fast = [r for r in serving if r["pattern"] == "sequential" and r["touched_pages"] * PAGE
            / r["seconds"] >= 1e9]  # fmt: skip
    return {
        "chains": chains,
        "loop_lag_p99_ms_at_ge_1GBps": {
            f"{r['fixture']}/{r['rw']}/{r['cache']}": r["loop_lag_p99_ms"] for r in fast
        },
        "single_page_p50_vs_minimal": b1["lat_p50_us"] / mini["lat_p50_us"],
        "single_page_p50_us": {"engine-b1": b1["lat_p50_us"], "minimal": mini["lat_p50_us"]},
        "sequential_speedup_vs_batch1": seq_b1["seconds"] / seq["seconds"],
        "prefetch_fault_reduction": 1 - on["faults"] / max(1, off["faults"]),
        "prefetch_speedup": off["resume_seconds"] / on["resume_seconds"],
        "prefetch_resume_ms": {
            "off": off["resume_seconds"] * 1e3,
            "on": on["resume_seconds"] * 1e3,
        },
        "engine_sequential_gbps": gbps,
        "loop_lag_p99_ms_engine_sequential": seq["loop_lag_p99_ms"],
        "loop_lag_p99_ms_engine_max": max(r["loop_lag_p99_ms"] for r in serving),
        "goals": {
            "single_page_p50_le_1.3x_minimal": b1["lat_p50_us"] <= 1.3 * mini["lat_p50_us"],
            "sequential_ge_10x_batch1": seq_b1["seconds"] >= 10 * seq["seconds"],
            "prefetch_ge_90pct_fewer_faults": on["faults"] <= 0.1 * off["faults"],
            "prefetch_ge_2x_faster": off["resume_seconds"] >= 2 * on["resume_seconds"],
            "loop_lag_p99_lt_5ms_at_ge_1GBps": gbps >= 1 and seq["loop_lag_p99_ms"] < 5,
        },
    }


def markdown(res: dict[str, Any]) -> str:
    cols = ["fixture", "handler", "pattern", "rw", "cache", "time ms", "MB/s touched", "faults"]
    cols += ["p50 µs", "p99 µs", "loop lag p99 ms"]
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for r in res["rows"]:
        label = r["handler"] + (f" ({r['variant']})" if "variant" in r else "")
        mbs = r["touched_pages"] * PAGE / r["seconds"] / 1e6
        faults = "-" if r["faults"] is None else str(r["faults"])
        lines.append(
            f"| {r['fixture']} | {label} | {r['pattern']} | {r['rw']} | {r['cache']} |"
            f" {r['seconds'] * 1e3:.1f} |"
            f" {mbs:.0f} | {faults} | {r['lat_p50_us']:.1f} | {r['lat_p99_us']:.1f} |"
            f" {r['loop_lag_p99_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plots(res: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in res["rows"] if "variant" not in r and r["fixture"] == LEGACY]
    scen = sorted({(r["pattern"], r["rw"], r["cache"]) for r in rows})
    hs = ["engine", "engine-b1", "kernel", "minimal"]
    fig, ax = plt.subplots(figsize=(12, 5))
    width = 0.2
    for i, h in enumerate(hs):
        ys = [
            find(rows, handler=h, pattern=p, rw=rw, cache=c)["seconds"] * 1e3 for p, rw, c in scen
        ]
        ax.bar([x + i * width for x in range(len(scen))], ys, width, label=h)
    ax.set_xticks([x + 1.5 * width for x in range(len(scen))])
    ax.set_xticklabels([f"{p}\n{rw} {c}" for p, rw, c in scen], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("time to touch (ms, log)")
    ax.set_title(f"fault-in of {res['size_bytes'] // MiB} MiB")
    ax.legend()
    fig.tight_layout()
    p1 = out / "faultin_times.png"
    fig.savefig(p1, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5))
    for h in hs:
        lat = sorted(find(rows, handler=h, pattern="random", rw="read", cache="warm")["_lat"])
        ys = [i / len(lat) for i in range(len(lat))]
        ax.plot([v / 1e3 for v in lat], ys, label=h)
    ax.set_xscale("log")
    ax.set_xlabel("first-touch latency (µs, log)")
    ax.set_ylabel("fraction of touches")
    ax.set_title("random read, warm cache: per-page latency CDF")
    ax.legend()
    fig.tight_layout()
    p2 = out / "faultin_latency_cdf.png"
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return [p1, p2]
