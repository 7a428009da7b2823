"""Clones share memory through KSM: a real wrennd with ``ksm = "clones"`` managing ksmd,
ten clones of a 256 MiB template that touch the same 64 MiB, real ksmd merging.

host.stats must report >= 80 % of the clones' identical copied pages merged; the
kernel's own page flags (/proc/PID/pagemap + /proc/kpageflags KPF_KSM) confirm that
the merged pages are the guest memory's.  The VMM of the sandbox booted from an
image stays unmergeable, and the knobs the daemon set are the host's again once no
clone is left and after the daemon stops.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.sandbox.running_daemon import Daemon
from wrennd import features
from wrennd.rpc.client import Client
from wrennd.sandbox.sharing import KsmSettings, pages_to_scan
from wrennd.vm import ksm
from wrennd_sim.fcsim.control import ControlClient
from wrennd_sim.ksm_pages import guest_ksm_pages

pytestmark = [
    pytest.mark.root,
    pytest.mark.netns,
    pytest.mark.uffd,
    pytest.mark.skipif(not features.ksm().available, reason=features.ksm().reason),
]

CLONES = 10
MEMORY_MIB = 256
TOUCHED = 64 << 20
PAGES = TOUCHED // 4096
CHUNK = 4 << 20
MERGE_DEADLINE = 240.0


@pytest.fixture
def knobs() -> Iterator[dict[str, int]]:
    """The host's ksmd knobs before the test; put back whatever happens."""
    before = ksm.read_knobs()
    yield before
    if ksm.read_knobs() != before:
        ksm.write_knobs(before)


async def control(info: dict[str, Any], op: str, **args: Any) -> Any:
    ctl = ControlClient(Path(info["vmm"]["control_socket"]))
    try:
        return await ctl.call(op, **args)
    finally:
        await ctl.close()


async def merged_stats(c: Client, pids: set[int]) -> dict[str, Any]:
    """Poll host.stats until every clone has 80 % of its copied pages' worth merged
    (or the deadline); the last answer."""
    deadline = time.monotonic() + MERGE_DEADLINE
    while True:
        stats = (await c.call("host.stats"))["ksm"]
        per = {v["pid"]: v["merging_pages"] for v in stats["vmms"] if v["pid"] in pids}
        if len(per) == len(pids) and min(per.values()) >= 0.8 * PAGES:
            return stats
        if time.monotonic() > deadline:
            return stats
        await asyncio.sleep(1.0)


async def test_ten_clones_share_their_identical_pages(
    daemon: Daemon, place: Any, knobs: dict[str, int]
) -> None:
    daemon.start(
        WRENND_KSM="clones",
        WRENND_KSM_MANAGE="true",
        WRENND_KSM_SCAN_PERIOD_S="1",
        WRENND_KSM_MAX_PAGES_TO_SCAN="20000",
    )
    c = await daemon.client()
    info = (await c.call("host.info"))["ksm"]
    assert info["mode"] == "clones" and info["available"] and not info["managed_by_daemon"]
    src = await c.call("sandbox.create", {"image": "base", "memory_mib": MEMORY_MIB})
    for offset in range(0, TOUCHED, CHUNK):
        data = base64.b64encode(os.urandom(CHUNK)).decode()
        await control(src, "write", offset=offset, data=data)
    await c.call("template.create", {"sandbox_id": src["id"], "name": "shared"})
    clones = await asyncio.gather(
        *(c.call("sandbox.create", {"template": "shared"}) for _ in range(CLONES))
    )
    for clone in clones:
        await control(clone, "touch", count=PAGES, order="sequential", arg=0, write=False)
    pids = {int(clone["vmm"]["pid"]) for clone in clones}
    src_pid = int((await c.call("sandbox.get", {"id": src["id"]}))["vmm"]["pid"])
    assert all(ksm.process_stat(pid)["ksm_merge_any"] for pid in pids)  # type: ignore[index]
    assert not ksm.process_stat(src_pid)["ksm_merge_any"]  # type: ignore[index]

    stats = await merged_stats(c, pids)
    assert {v["pid"] for v in stats["vmms"]} == pids, "only the clones are mergeable"
    assert sum(v["merging_pages"] for v in stats["vmms"]) >= 0.8 * CLONES * PAGES, stats
    assert min(v["merging_pages"] for v in stats["vmms"]) >= 0.8 * PAGES, stats
    assert stats["pages_sharing"] > 0 and stats["profit_bytes"] > 0
    assert stats["ksmd_cpu_seconds"] is not None and stats["ksmd_cpu_seconds"] > 0
    # The merged pages are the guest's copied ones (host.stats counts the VMM's heap too,
    # so ksmd may still be on its way when that count crossed 80 %).
    deadline = time.monotonic() + MERGE_DEADLINE
    for pid in pids:
        while (merged := await asyncio.to_thread(guest_ksm_pages, pid, MEMORY_MIB << 20)) < (
            0.8 * PAGES
        ):
            assert time.monotonic() < deadline, f"VMM {pid}: {merged} guest pages merged"
            await asyncio.sleep(1.0)
    info = (await c.call("host.info"))["ksm"]
    assert info["running"] and info["managed_by_daemon"]
    assert info["turned_on_by"] == ("host" if knobs["run"] == 1 else "daemon")
    settings = KsmSettings("clones", True, 1, 20000)
    assert info["knobs"]["pages_to_scan"] == pages_to_scan(settings, [MEMORY_MIB] * CLONES)
    assert info["saved_knobs"] == knobs

    for clone in clones:
        await c.call("sandbox.destroy", {"id": clone["id"]})
    deadline = time.monotonic() + 30
    while (await c.call("host.info"))["ksm"]["managed_by_daemon"]:
        assert time.monotonic() < deadline, "the knobs were not given back without clones"
        await asyncio.sleep(0.5)
    assert ksm.read_knobs() == knobs
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0
    assert ksm.read_knobs() == knobs
    assert not (place.run_dir / "ksm.json").exists()
