"""create -> exec -> write a file -> pause -> resume -> the file and the memory are intact."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.polling import wait_for
from wrennd.guest.protocol import CommandSpec
from wrennd.sandbox.errors import ImageNotFound, PauseUndone, SandboxNotFound, WrongState
from wrennd.snapshot import read_prefetch_map
from wrennd_sim.fcsim.control import ControlClient
from wrennd_sim.inproc import InProcess

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd]

MEM_MIB = 64


async def checksum(info: dict[str, object]) -> str:
    vmm = info["vmm"]
    assert isinstance(vmm, dict)
    ctl = ControlClient(Path(vmm["control_socket"]))
    try:
        return await ctl.checksum()
    finally:
        await ctl.close()


async def test_create_exec_file_pause_resume(manager: InProcess, env: Any) -> None:
    info = await manager.create("base", memory_mib=MEM_MIB, metadata={"t": "basic"})
    sid = info["id"]
    assert info["state"] == "running"
    held = env.leaks()  # the leak check sees a running sandbox's resources
    assert any(h.startswith("netns") for h in held) and any(h.startswith("process") for h in held)
    assert any(h.startswith("nft") for h in held) and any(h.startswith("link") for h in held)
    result = await manager.exec(sid, CommandSpec(shell="echo hello; echo err >&2"))
    assert result.ok and result.stdout == b"hello\n" and result.stderr == b"err\n"
    guest = manager.guest(sid)
    await guest.write_file("/root/note.txt", b"kept across pauses\n")
    before = await checksum(info)

    paused = await manager.pause(sid)
    assert paused["state"] == "paused" and paused["generation"] == 0
    assert "vmm" not in paused
    resumed = await manager.resume(sid)
    assert resumed["state"] == "running"
    assert await checksum(resumed) == before
    data = await manager.guest(sid).read_bytes("/root/note.txt")
    assert data == b"kept across pauses\n"

    # The second pause is a Diff; the resume's first-touch record becomes the prefetch map.
    assert (await manager.pause(sid))["generation"] == 1
    # The network's removal and the map's write follow the pause's answer.
    await manager.settled(sid)
    snapshot_dir = env.state_dir / "sandboxes" / sid / "snapshot"
    assert read_prefetch_map(snapshot_dir), "the engine's working set was kept"
    record = json.loads((snapshot_dir.parent / "state.json").read_bytes())
    assert record["state"] == "paused" and record["slot"] is None
    assert not env.leaks(), "a paused sandbox holds no host resources"
    resumed = await manager.resume(sid)
    assert await checksum(resumed) == before
    await manager.destroy(sid)
    assert manager.list() == []
    assert not (snapshot_dir.parent).exists()
    assert not env.leaks()


async def test_wrong_state_and_unknown(manager: InProcess) -> None:
    with pytest.raises(SandboxNotFound):
        manager.get("sb-000000000000")
    with pytest.raises(ImageNotFound):
        await manager.create("no-such-image")
    info = await manager.create("base", memory_mib=MEM_MIB)
    with pytest.raises(WrongState, match="is running: cannot resume"):
        await manager.resume(info["id"])
    await manager.pause(info["id"])
    with pytest.raises(WrongState, match="is paused"):
        await manager.exec(info["id"], CommandSpec(argv=["true"]))
    with pytest.raises(WrongState, match="is paused: cannot pause"):
        await manager.pause(info["id"])
    await manager.destroy(info["id"])


async def test_timeout_pauses_then_resume_rearms(manager: InProcess) -> None:
    info = await manager.create("base", memory_mib=MEM_MIB, timeout_s=600)
    sid = info["id"]
    assert info["expires_at"] > info["created_at"] + 500
    await manager.set_timeout(sid, 0.5)
    await wait_for(lambda: manager.get(sid)["state"] == "paused", timeout=60, interval=0.1)
    resumed = await manager.resume(sid)
    assert resumed["state"] == "running" and resumed["expires_at"] is not None
    await manager.set_timeout(sid, None)
    assert manager.get(sid)["expires_at"] is None
    await manager.destroy(sid)


async def test_failed_pause_thaws_and_keeps_running(manager: InProcess, env: Any) -> None:
    info = await manager.create("base", memory_mib=MEM_MIB)
    sid = info["id"]
    await manager.pause(sid)
    info = await manager.resume(sid)
    ctl = ControlClient(Path(info["vmm"]["control_socket"]))
    try:
        await ctl.call("dirty", fraction=0.05, seed=7)
    finally:
        await ctl.close()
    before = await checksum(info)
    # The generation store is a file for a moment: the Diff is taken, its ingest fails.
    store = env.state_dir / "memfiles"
    store.rename(env.state_dir / "memfiles.away")
    store.write_bytes(b"in the way")
    try:
        with pytest.raises(PauseUndone, match="keeps running"):
            await manager.pause(sid)
    finally:
        store.unlink()
        (env.state_dir / "memfiles.away").rename(store)
    got = manager.get(sid)
    assert got["state"] == "running" and "pause of" in got["error"]
    assert (await manager.exec(sid, CommandSpec(shell="echo ok > /root/after"))).ok, "thawed"
    assert await checksum(got) == before
    # The failed Diff reset the VMM's dirty pages: the next snapshot must be Full.
    assert (await manager.pause(sid))["generation"] == 0
    resumed = await manager.resume(sid)
    assert await checksum(resumed) == before
    assert await manager.guest(sid).read_bytes("/root/after") == b"ok\n"
    await manager.destroy(sid)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _agents_under(pid: int) -> list[int]:
    out = []
    for p in _descendants(pid):
        with contextlib.suppress(OSError):
            if b"agent" in Path(f"/proc/{p}/cmdline").read_bytes():
                out.append(p)
    return out


async def test_a_frozen_guest_does_not_outlive_its_vmm(manager: InProcess, env: Any) -> None:
    """The guest's root frozen and its agent stopped (SIGSTOP: nothing in the guest can
    thaw it, and its init does not shut the guest down by itself as it would if the agent
    died): stopping the VMM must leave no frozen filesystem, loop device or mount behind."""
    info = await manager.create("base", memory_mib=MEM_MIB)
    await manager.guest(info["id"]).prepare_snapshot(thaw_after=None)
    agents = await asyncio.to_thread(_agents_under, info["vmm"]["pid"])
    assert agents, "the guest agent runs under the VMM"
    for pid in agents:
        os.kill(pid, signal.SIGSTOP)
    await manager.destroy(info["id"])
    assert not env.leaks()


async def test_a_vmm_that_dies_puts_the_sandbox_in_error(manager: InProcess, env: Any) -> None:
    info = await manager.create("base", memory_mib=MEM_MIB)
    sid = info["id"]
    os.kill(info["vmm"]["pid"], signal.SIGTERM)
    state_file = env.state_dir / "sandboxes" / sid / "state.json"

    def persisted() -> dict[str, Any]:
        return json.loads(state_file.read_bytes())  # type: ignore[no-any-return]

    # The record on disk is written after the state in memory changes: wait for both.
    await wait_for(
        lambda: manager.get(sid)["state"] == "error" and persisted()["state"] == "error",
        timeout=30,
        interval=0.05,
        what="the sandbox is in error, in memory and on disk",
    )
    got = manager.get(sid)
    assert "VMM exited" in got["error"], got
    assert "vmm" not in got
    assert persisted()["slot"] is None
    with pytest.raises(WrongState, match="is error"):
        await manager.exec(sid, CommandSpec(argv=["true"]))
    await manager.destroy(sid)
    assert not env.leaks()


@pytest.mark.parametrize("env", ["destroy"], indirect=True)
async def test_timeout_destroys_when_configured(manager: InProcess, env: Any) -> None:
    info = await manager.create("base", memory_mib=MEM_MIB, timeout_s=0.5)
    await wait_for(lambda: manager.list() == [], timeout=60, interval=0.1)
    with pytest.raises(SandboxNotFound):
        manager.get(info["id"])
    assert not env.leaks()
