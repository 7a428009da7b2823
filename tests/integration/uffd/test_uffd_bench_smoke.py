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
    assert handlers == {"engine", "engine-b1", "kernel", "minimal"}
    assert len(rows) == 4 * 3 * 2 + 2 + 3 * 3  # the chain: 3 handlers, 3 scenarios
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
