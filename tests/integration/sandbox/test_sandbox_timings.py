"""Stage timings under fcsim: every lifecycle operation answers a ``timings`` record whose
stages (name, owner, ms) add up to its total, ``sandbox.get`` keeps the last of each,
progress reports carry the ms of finished stages, and one logfmt line is logged each."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from wrennd_sim.inproc import InProcess

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd]

MEM_MIB = 64
# Rounding to 3 decimals per stage is the only difference the sum may have.
TOLERANCE_MS = 0.05
RESUME_STAGES = [
    "network",
    "storage",
    "snapshot_open",
    "engine_prepare",
    "vmm_spawn",
    "vmm_start",
    "snapshot_load",
    "engine_ready",
    "vm_resume",
    "agent",
    "other",
]
OWNERS = {
    "vmm_start": "vmm",
    "snapshot_load": "vmm",
    "vm_resume": "vmm",
    "vmm_exit": "vmm",
    "snapshot": "vmm",
    "pause_vm": "vmm",
    "boot": "vmm",
    "agent": "guest",
    "prepare": "guest",
}


def check(record: dict[str, Any], operation: str, names: list[str]) -> None:
    assert record["operation"] == operation
    stages = record["stages"]
    assert sorted(s["name"] for s in stages) == sorted(names), stages
    for s in stages:
        assert set(s) == {"name", "owner", "ms", "wall_ms", "start_ms"}
        assert s["owner"] == OWNERS.get(s["name"], "daemon"), s
        assert s["ms"] >= 0 and s["wall_ms"] >= 0 and s["start_ms"] >= 0
        if s["name"] != "other":
            assert s["start_ms"] + s["wall_ms"] <= record["total_ms"] + TOLERANCE_MS
    total = sum(s["ms"] for s in stages)
    assert total == pytest.approx(record["total_ms"], abs=TOLERANCE_MS)
    assert record["total_ms"] > 0
    owners = record["owners"]
    assert set(owners) == {"daemon", "vmm", "guest"}
    assert sum(owners.values()) == pytest.approx(record["total_ms"], abs=TOLERANCE_MS)
    assert owners["daemon"] > 0
    if operation != "template_create":  # a template is built from files alone
        assert owners["vmm"] > 0


def finished(reports: list[tuple[str, dict[str, int]]]) -> list[str]:
    """The ``<stage>_ms`` facts of every report, sorted (a stage reported twice shows up
    twice)."""
    return sorted(k for _, facts in reports for k in facts if k.endswith("_ms"))


async def test_every_operation_answers_its_stage_timings(
    manager: InProcess, env: Any, caplog: pytest.LogCaptureFixture
) -> None:
    reports: list[tuple[str, dict[str, int]]] = []

    async def progress(stage: str, done: int, total: int, **facts: int) -> None:
        reports.append((stage, facts))

    caplog.set_level(logging.INFO, logger="wrennd.sandbox.timing")
    info = await manager.create("base", memory_mib=MEM_MIB, progress=progress)
    sid = info["id"]
    check(info["timings"]["create"], "create",
          ["network", "storage", "vmm_spawn", "vmm_start", "boot", "agent", "other"])  # fmt: skip
    assert info["timings"]["create"]["owners"]["guest"] > 0
    # Each report names the stages finished since the one before: every stage once.
    assert {r[0] for r in reports[:2]} == {"network", "storage"}  # they start together
    assert finished(reports) == sorted(s["name"] + "_ms" for s in info["timings"]["create"]
                                       ["stages"] if s["name"] != "other")  # fmt: skip

    paused = await manager.pause(sid)
    full = paused["timings"]["pause"]
    # The network, the prefetch map and the kept disk follow the answer (afterpause).
    pause_names = ["prepare", "pause_vm", "snapshot", "ingest", "publish", "vmm_exit",
                   "storage", "other"]  # fmt: skip
    check(full, "pause", pause_names)
    assert full["kind"] == "Full"

    reports.clear()
    resumed = await manager.resume(sid, progress)
    check(resumed["timings"]["resume"], "resume", RESUME_STAGES)
    assert finished(reports) == sorted(f"{n}_ms" for n in RESUME_STAGES if n != "other")
    assert "load" not in [r[0] for r in reports]
    assert reports[-1][0] == "done" and "pages_installed" in reports[-1][1]
    diff = (await manager.pause(sid))["timings"]["pause"]
    check(diff, "pause", pause_names)
    assert diff["kind"] == "Diff"

    # sandbox.get keeps the last of each operation.
    kept = manager.get(sid)["timings"]
    assert set(kept) == {"create", "pause", "resume"}
    assert kept["pause"] == diff and kept["create"] == info["timings"]["create"]

    made = await manager.create_template(sid, "timed")
    check(made["timings"]["template_create"], "template_create",
          ["flatten", "snapshot_link", "publish", "other"])  # fmt: skip
    clone = await manager.create(template="timed")
    check(clone["timings"]["create"], "clone", ["snapshot_copy", "disk_keep", *RESUME_STAGES])

    gone = await manager.destroy(clone["id"])
    check(gone["timings"]["destroy"], "destroy",
          ["vmm_exit", "network", "storage", "files", "other"])  # fmt: skip
    await manager.destroy(sid)
    await manager.delete_template("timed")

    lines = [r for r in caplog.records if r.getMessage() == "timings"]
    ops = [r.kv["operation"] for r in lines]  # type: ignore[attr-defined]
    assert ops == ["create", "pause", "resume", "pause", "template_create", "clone",
                   "destroy", "destroy"]  # fmt: skip
    first = lines[0].kv  # type: ignore[attr-defined]
    assert first["sandbox"] == sid and first["ok"] is True
    assert {"total_ms", "daemon_ms", "vmm_ms", "guest_ms", "stage_network_ms"} <= set(first)
    assert not env.leaks()
