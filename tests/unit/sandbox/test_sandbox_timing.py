"""Stage bookkeeping with a fake clock: sequential and concurrent stages, the critical-path
charge, owners' shares, progress reports with finished stages' ms, and the log line."""

from __future__ import annotations

import asyncio
import logging

import pytest

from wrennd.sandbox.timing import Span, Timings, critical_path


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += ms / 1e3


async def test_sequential_stages_and_glue() -> None:
    clock = FakeClock()
    reports: list[tuple[str, int, int, dict[str, int]]] = []

    async def progress(stage: str, done: int, total: int, **facts: int) -> None:
        reports.append((stage, done, total, facts))

    t = Timings("resume", progress, steps=3, clock=clock)
    async with t.stage("network", "daemon"):
        clock.advance(11)
    clock.advance(2)  # glue between stages: the daemon's
    async with t.stage("vmm_start", "vmm"):
        clock.advance(400)
    async with t.stage("agent", "guest", pages=7):
        clock.advance(250)
    await t.report("done")
    rec = t.finish()
    assert rec.total_ms == pytest.approx(663)
    ms = {s.name: s.ms for s in rec.stages}
    assert ms == pytest.approx({"network": 11, "vmm_start": 400, "agent": 250, "other": 2})
    assert rec.by_owner() == pytest.approx({"daemon": 13, "vmm": 400, "guest": 250})
    assert sum(s.ms for s in rec.stages) == pytest.approx(rec.total_ms)
    assert [r[:3] for r in reports] == [
        ("network", 0, 3),
        ("vmm_start", 1, 3),
        ("agent", 2, 3),
        ("done", 3, 3),
    ]
    assert reports[0][3] == {}
    assert reports[1][3] == {"network_ms": 11}
    assert reports[2][3] == {"vmm_start_ms": 400, "pages": 7}
    assert reports[3][3] == {"agent_ms": 250}
    js = rec.to_json()
    assert js["operation"] == "resume" and js["total_ms"] == 663.0
    assert [s["name"] for s in js["stages"]] == ["network", "vmm_start", "agent", "other"]
    assert js["stages"][1] == {
        "name": "vmm_start", "owner": "vmm", "ms": 400.0, "wall_ms": 400.0, "start_ms": 13.0,
    }  # fmt: skip


async def test_concurrent_stages_are_charged_on_the_critical_path() -> None:
    """network 0-11 ms, storage 0-3 ms, engine 0-20 ms at once, then the VMM 20-420 ms:
    the engine hides the others (charged 20), the stages still add up to the total."""
    clock = FakeClock()
    t = Timings("resume", clock=clock)
    release = {n: asyncio.Event() for n in ("network", "storage", "engine")}

    async def step(name: str) -> None:
        async with t.stage(name, "daemon"):
            await release[name].wait()

    tasks = {n: asyncio.ensure_future(step(n)) for n in release}
    await asyncio.sleep(0)  # every step has begun at the same fake instant
    for name, at_ms in (("storage", 3), ("network", 11), ("engine", 20)):
        clock.now = 100.0 + at_ms / 1e3
        release[name].set()
        await asyncio.wait_for(tasks[name], 1)
    async with t.stage("vmm_start", "vmm"):
        clock.advance(400)
    rec = t.finish()
    by_name = {s.name: s for s in rec.stages}
    assert by_name["engine"].ms == pytest.approx(20)
    assert by_name["network"].ms == pytest.approx(0) and by_name["network"].wall_ms > 0
    assert by_name["storage"].ms == pytest.approx(0)
    assert by_name["vmm_start"].ms == pytest.approx(400)
    assert sum(s.ms for s in rec.stages) == pytest.approx(rec.total_ms, abs=1e-6)
    assert sum(s.wall_ms for s in rec.stages) > rec.total_ms  # overlap is real
    assert rec.by_owner()["daemon"] == pytest.approx(20)


def test_partly_overlapping_spans() -> None:
    """a 0-10, b 5-30: b ends last, so b gets 5-30 and a the 5 ms before b began;
    the gap 30-40 is nobody's stage."""
    spans = [Span("a", "daemon", 0.0, 0.010), Span("b", "vmm", 0.005, 0.030)]
    charged = critical_path(spans, 0.0, 0.040)
    assert charged[0] == pytest.approx(0.005)
    assert charged[1] == pytest.approx(0.025)
    assert charged[-1] == pytest.approx(0.010)


async def test_a_failing_stage_is_still_timed_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    t = Timings("pause", clock=clock)
    t.facts["kind"] = "Diff"
    with pytest.raises(RuntimeError):
        async with t.stage("snapshot", "vmm"):
            clock.advance(5)
            raise RuntimeError("disk full")
    with caplog.at_level(logging.INFO, logger="wrennd.sandbox.timing"):
        rec = t.failed("sb-000000000001")
    assert [s.name for s in rec.stages] == ["snapshot", "other"]
    assert rec.stages[0].ms == pytest.approx(5)
    (line,) = [r for r in caplog.records if r.getMessage() == "timings"]
    fields = line.kv  # type: ignore[attr-defined]
    assert fields["ok"] is False and fields["stage_snapshot_ms"] == "5.00"
    assert fields["operation"] == "pause" and fields["kind"] == "Diff"
    assert fields["vmm_ms"] == "5.00" and fields["total_ms"] == "5.00"
