"""Write-ahead ownership: the record names a sandbox's resources before they exist, and a
second VMM on a held layer is refused even when the bookkeeping says it is free."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wrennd.guest.protocol import CommandSpec
from wrennd.sandbox.errors import StorageFailed
from wrennd.sandbox.record import SandboxState
from wrennd.storage import holders
from wrennd.vm.identity import VmmIdentity, process_state, start_time
from wrennd_sim.inproc import InProcess

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd]

MEM_MIB = 32


async def test_record_names_slot_and_vmm_before_they_are_used(manager: InProcess) -> None:
    seen: dict[str, dict[str, Any]] = {}
    records = manager.service.deps.records

    async def progress(stage: str, done: int, total: int, **facts: int) -> None:
        # What a crash at this moment would leave for the next daemon to read.
        ids = [p.name for p in records.root.iterdir() if p.name.startswith("sb-")]
        if len(ids) == 1:
            seen[stage] = json.loads((records.dir(ids[0]) / "state.json").read_bytes())

    info = await manager.create("base", memory_mib=MEM_MIB, progress=progress)
    sid = info["id"]
    # The slot is written before its network: by the VMM's spawn (in the network's
    # namespace) it is on disk.  (Network and storage start together, so the
    # storage report may come first.)
    assert seen["vmm_spawn"]["slot"] is not None
    at_agent = seen["agent"]  # the VM booted, the agent not yet up
    pid = at_agent["vmm_pid"]
    assert at_agent["vmm_api_socket"].endswith(f"{sid}/vmm/api.sock")
    assert at_agent["vmm_start_time"] == start_time(pid)
    ident = VmmIdentity(pid, at_agent["vmm_start_time"], at_agent["vmm_api_socket"])
    assert ident.alive()
    assert not VmmIdentity(pid, ident.start_time + 1, ident.api_socket).alive()

    await manager.pause(sid)
    rec = records.load(sid)
    assert rec.vmm_pid is None and rec.vmm_api_socket is None and rec.slot is None
    seen.clear()
    await manager.resume(sid, progress)
    live = manager.service.registry.get(sid).live
    assert live is not None and live.vmm is not None
    assert seen["agent"]["vmm_pid"] == live.vmm.proc.pid


async def test_second_vmm_on_a_held_layer_is_refused(manager: InProcess) -> None:
    service = manager.service
    sid = (await manager.create("base", memory_mib=MEM_MIB))["id"]
    await manager.pause(sid)
    await manager.resume(sid)
    sb = service.registry.get(sid)
    drive = (await service.storage.record(sid)).drive
    assert holders.holders(drive)  # the running VM's guest holds its drive
    first = sb.live
    assert first is not None and first.vmm is not None
    # Wrong bookkeeping, on purpose: the sandbox and its storage look paused and detached.
    sb.live = None
    sb.record.state = SandboxState.PAUSED
    await service.storage.detach(sid)
    with pytest.raises(StorageFailed) as caught:
        await manager.resume(sid)
    assert caught.value.data["holders"], caught.value
    # The first VMM never noticed: its guest still answers.
    assert first.vmm.proc.running and process_state(first.vmm.proc.pid) in ("R", "S")
    assert (await first.require_guest().run(CommandSpec(shell="echo alive"))).ok
    # Put the bookkeeping right so that teardown destroys the real VMM.
    await service.storage.attach(sid)
    sb.live = first
    sb.record.state = SandboxState.RUNNING
    await service.registry.settle(sb, SandboxState.RUNNING, None)
