"""12 pause/resume cycles with memory dirtied between them, across background collapses.

Every cycle compares fcsim's whole-memory checksum before the pause and
after the resume, and reads back every file written so far: no difference
may ever appear, whether the memory came from a Full, a Diff chain, or a
chain collapsed in the background (max_generations=4 in these tests).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from wrennd.guest.protocol import CommandSpec
from wrennd.snapshot import parse_header
from wrennd_sim.fcsim.control import ControlClient
from wrennd_sim.inproc import InProcess

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd]

CYCLES = 12


def control(info: dict[str, Any]) -> ControlClient:
    return ControlClient(Path(info["vmm"]["control_socket"]))


async def test_twelve_cycles_across_collapses(manager: InProcess, env: Any) -> None:
    info = await manager.create("base", memory_mib=64)
    sid = info["id"]
    snapshot_dir = env.state_dir / "sandboxes" / sid / "snapshot"
    collapsed_seen = False
    files: dict[str, bytes] = {}
    for cycle in range(CYCLES):
        ctl = control(info)
        try:
            await ctl.call("dirty", fraction=0.02 + 0.01 * (cycle % 3), seed=cycle)
            before = await ctl.checksum()
        finally:
            await ctl.close()
        name = f"/root/cycle-{cycle}.txt"
        files[name] = f"written in cycle {cycle}\n".encode()
        await manager.guest(sid).write_file(name, files[name])

        paused = await manager.pause(sid)
        assert paused["state"] == "paused"
        assert paused["generation"] is not None
        info = await manager.resume(sid)
        header = parse_header((snapshot_dir / "memory.header").read_bytes())
        if cycle > 0 and header.generation < cycle:
            collapsed_seen = True

        ctl = control(info)
        try:
            assert await ctl.checksum() == before, f"memory differs after cycle {cycle}"
        finally:
            await ctl.close()
        guest = manager.guest(sid)
        for path, data in files.items():
            assert await guest.read_bytes(path) == data, f"{path} after cycle {cycle}"
        result = await manager.exec(sid, CommandSpec(argv=["cat", "/proc/1/comm"]))
        assert result.ok
    assert collapsed_seen, "the chain was never collapsed"
    await manager.destroy(sid)
    assert not env.leaks()


async def test_ten_sandboxes_concurrently(manager: InProcess, env: Any) -> None:
    async def one(n: int) -> None:
        info = await manager.create("base", memory_mib=64, metadata={"n": str(n)})
        sid = info["id"]
        await manager.guest(sid).write_file("/root/n", str(n).encode())
        await manager.pause(sid)
        await manager.resume(sid)
        assert await manager.guest(sid).read_bytes("/root/n") == str(n).encode()
        await manager.destroy(sid)

    results = await asyncio.gather(*(one(n) for n in range(10)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    assert manager.list() == []
    assert not env.leaks()
