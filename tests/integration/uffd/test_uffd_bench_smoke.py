"""bench/faultin.py stays runnable: a tiny run (4 MiB, warm only) end to end.
The numbers are not judged here; only that every configuration ran and the
outputs exist and agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.uffd
ROOT = Path(__file__).resolve().parents[3]


def test_faultin_small_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "faultin.py"), "--size-mib", "4", "--no-cold",
         "--out", str(out), "--workdir", str(tmp_path), "--fixtures", "chain3"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    res = json.loads((out / "faultin.json").read_text())
    rows = res["rows"]
    handlers = {r["handler"] for r in rows}
    assert handlers == {"engine", "engine-verify", "engine-b1", "kernel", "minimal"}
    assert len(rows) == 5 * 3 * 2 + 2 + 4 * 3  # the chain: 4 handlers, 3 scenarios
    for r in rows:
        if r["handler"] == "engine-verify":
            assert r["verified_blocks"] > 0
        elif r["handler"] == "engine":
            assert r["verified_blocks"] == 0
    cost = res["ratios"]["verify_pages_cost"]
    assert len(cost["by_scenario"]) == 3 * 2 + 3 and "le_15pct" in cost["goals"]
    npages = 4 * 1024 * 1024 // res["page_size"]
    for r in rows:
        if r["handler"] in ("engine-b1", "minimal") and r["pattern"] != "ws10":
            assert r["faults"] == npages  # one fault per page without batching
    assert set(res["ratios"]["goals"]) >= {"sequential_ge_10x_batch1"}
    assert set(res["ratios"]["chains"]["chain3"]["goals"]) == {"ge_2x_kernel_warm", "ge_8x_batch1"}
    assert (out / "faultin.md").read_text().count("\n") == len(rows) + 2
    assert (out / "faultin_times.png").stat().st_size > 0
    assert (out / "faultin_latency_cdf.png").stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("faultin-")]


def test_copy_floor_small_run(tmp_path: Path) -> None:
    """bench/copy_floor.py checks every installed byte against the flat memfile
    itself (it exits non-zero on a mismatch or a failed ioctl)."""
    out = tmp_path / "floor.json"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "copy_floor.py"), "--size-mib", "4", "--reps", "1",
         "--workdir", str(tmp_path), "--json", str(out)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    res = json.loads(out.read_text())
    assert [r["fixture"] for r in res["rows"]] == ["chain3", "chain10", "interleaved"]
    for r in res["rows"]:
        assert r["ioctls"]["floor-bounce"] == 4  # 1 MiB windows over 4 MiB
        assert r["ioctls"]["floor-runs"] > 4  # zero and data runs split the windows
        assert set(r["median_ms"]) == {"kernel-read", "kernel-write", "floor-bounce", "floor-runs"}
        assert all(ms > 0 for ms in r["median_ms"].values())
        assert r["best_possible_vs_kernel_read"] > 0 and r["best_possible_vs_kernel_write"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["floor.json"]  # the fixtures are gone
