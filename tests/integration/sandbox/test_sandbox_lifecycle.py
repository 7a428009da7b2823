"""create -> exec -> write a file -> pause -> resume -> the file and the memory are intact."""

from __future__ import annotations

from pathlib import Path

import pytest

from wrennd.fcsim.control import ControlClient
from wrennd.guest.protocol import CommandSpec
from wrennd.sandbox.manager import SandboxManager

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


async def test_create_exec_file_pause_resume(manager: SandboxManager) -> None:
    info = await manager.create("base", memory_mib=MEM_MIB, metadata={"t": "basic"})
    sid = info["id"]
    assert info["state"] == "running"
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
    await manager.destroy(sid)
    assert manager.list() == []
