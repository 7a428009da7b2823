"""Process metrics, event-loop lag and provider sections report what is real."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from tests.polling import wait_for
from wrennd import features
from wrennd.metrics import LoopLag, Sections, process_stats


def test_process_stats_match_this_process() -> None:
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(20)]
    try:
        stats = process_stats(time.monotonic() - 5)
        assert stats["pid"] == os.getpid()
        assert stats["uptime_s"] >= 5
        assert stats["open_fds"] >= 20
        assert stats["threads"] >= 1
        assert 0 < stats["rss_bytes"] <= stats["rss_peak_bytes"]
    finally:
        for fd in held:
            os.close(fd)


async def test_loop_lag_sees_a_blocked_loop() -> None:
    lag = LoopLag(interval=0.01)
    task = asyncio.ensure_future(lag.run())
    await wait_for(lambda: lag.percentiles()["samples"] >= 5, what="5 samples before the block")
    time.sleep(0.2)  # noqa: ASYNC251 -- blocking the loop is what this test measures
    before = lag.percentiles()["samples"]
    # Enough samples after the block that the blocked one is an outlier, not the median.
    await wait_for(lambda: lag.percentiles()["samples"] >= before + 6, what="samples after it")
    task.cancel()
    result = lag.percentiles()
    assert result["max_ms"] >= 150
    assert result["p50_ms"] < 150
    assert lag.percentiles(window_s=1e-9)["samples"] == 0


def test_sections_collect_providers_and_refuse_duplicates() -> None:
    sections = Sections()
    counts = {"running": 0}
    sections.add("sandboxes", lambda: counts)
    counts["running"] = 3
    assert sections.collect() == {"sandboxes": {"running": 3}}
    with pytest.raises(ValueError, match="already"):
        sections.add("sandboxes", dict)


def test_binary_version_runs_the_binary(tmp_path: Path) -> None:
    fake = tmp_path / "firecracker"
    fake.write_text("#!/bin/sh\necho\necho 'Firecracker v1.16.1'\n")
    fake.chmod(0o755)
    assert features.binary_version(fake) == features.Binary(str(fake), True, "Firecracker v1.16.1")
    failing = tmp_path / "broken"
    failing.write_text("#!/bin/sh\necho oops >&2\nexit 3\n")
    failing.chmod(0o755)
    got = features.binary_version(failing)
    assert (got.present, got.version) == (True, "oops") and "exited 3" in got.reason
    absent = features.binary_version(tmp_path / "absent")
    assert not absent.present and "not an executable" in absent.reason
