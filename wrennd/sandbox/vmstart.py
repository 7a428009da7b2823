"""Starting a sandbox's VMM: its jail when VMMs run under the jailer, the spawn recorded
ahead in the sandbox's record, and the timing stages of both (bringup, restoring)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from wrennd.sandbox.environment import Deps, HostConfig
from wrennd.sandbox.errors import VmmFailed
from wrennd.sandbox.jail import Jail
from wrennd.sandbox.live import Live
from wrennd.sandbox.record import SandboxRecord
from wrennd.sandbox.timing import Timings
from wrennd.storage import holders
from wrennd.vm.errors import JailerError, VmmError
from wrennd.vm.identity import start_time
from wrennd.vm.launcher import FirecrackerArgs
from wrennd.vm.vmm import Vmm


async def save(deps: Deps, rec: SandboxRecord) -> None:
    await asyncio.to_thread(deps.records.save, rec)


async def make_jail(live: Live, cfg: HostConfig, rec: SandboxRecord) -> Jail | None:
    """The sandbox's chroot and cgroup limits when VMMs run under the jailer."""
    if cfg.jail is None:
        return None
    assert live.net is not None
    try:
        live.jail = await asyncio.to_thread(
            Jail.make, cfg.jail, live.sandbox_id, live.net.netns_path, rec.vcpus, rec.memory_mib
        )
    except (JailerError, OSError) as e:
        raise VmmFailed(f"making the jail of {live.sandbox_id}: {e}") from e
    return live.jail


async def jailed(place: Callable[..., tuple[str, ...]], *files: Path | None) -> tuple[str, ...]:
    """Place files in the jail (blocking); their jail paths."""
    try:
        return await asyncio.to_thread(place, *files)
    except JailerError as e:
        raise VmmFailed(str(e)) from e


async def unheld(drive: Path) -> None:
    """Return once nobody holds ``drive`` (a VMM or loop device left from an earlier run);
    DriveInUse after a while.  Checked as soon as the drive is known, beside the rest
    of the bring-up, before a VMM is started on it."""
    await asyncio.to_thread(holders.require_unheld, drive)


def record_ahead(deps: Deps, rec: SandboxRecord, uffd_served: bool) -> None:
    """Name the VMM in the record before it exists (its API socket; whether the UFFD
    engine will serve it), to be saved with the slot, before the network is made."""
    rec.vmm_api_socket = str(deps.paths(rec.id).vmm_files.api_socket)
    rec.vmm_pid, rec.vmm_start_time, rec.uffd_served = None, None, uffd_served


async def start_vmm(live: Live, deps: Deps, rec: SandboxRecord, t: Timings) -> Vmm:
    """A VMM (for a drive nobody holds: ``unheld`` was checked), recorded ahead: its API
    socket before the spawn (``record_ahead``, saved with the slot), its pid and start
    time as soon as it exists (written while the VMM starts up; done before its API is
    used).  Stages: ``vmm_spawn`` (the daemon's fork) until the process exists, then
    ``vmm_start`` (the VMM process starting up) until its API answers."""
    assert live.net is not None
    end_spawn = await t.begin("vmm_spawn", "daemon")
    end_start: list[Callable[[], None]] = []
    files = deps.paths(rec.id).vmm_files
    args = FirecrackerArgs(deps.cfg.vmm.binary, live.sandbox_id.replace("-", "_"), files)
    argv = args.argv()
    netns: Path | None = live.net.netns_path
    if live.jail is not None:
        # The jailer joins the namespace itself (--netns), then drops to the jail user.
        argv, netns = live.jail.argv(args), None
        await asyncio.to_thread(live.jail.own_files, files)
    argv = deps.sharing.wrap(argv, rec.template)  # KSM: the mark survives the jailer's exec
    # Saved with the slot, before the namespace the VMM is started in existed.
    assert rec.vmm_api_socket == str(files.api_socket) and rec.vmm_pid is None

    async def spawned(pid: int) -> None:
        end_spawn()
        end_start.append(await t.begin("vmm_start", "vmm"))
        rec.vmm_pid, rec.vmm_start_time = pid, start_time(pid)
        await save(deps, rec)

    try:
        live.vmm = await Vmm.start(argv, files, netns_path=netns, on_spawn=spawned)
    except VmmError as e:
        raise VmmFailed(f"starting the VMM for {live.sandbox_id}: {e}") from e
    finally:
        end_spawn()
        for end in end_start:
            end()
    deps.sharing.spawned()
    return live.vmm
