"""Restore a VM from a snapshot: the chain opened, the UFFD engine listening, a VMM
started and loaded with its memory served by the engine, the VM resumed.

Stages (sandbox/timing.py): ``snapshot_open`` and ``engine_prepare`` are the
daemon's, and run while the VMM is started (they do not depend on one
another; under the jailer the engine waits for the jail);
``vmm_spawn`` is the daemon's, ``vmm_start`` the VMM's; ``snapshot_load`` and
``vm_resume`` the VMM's (the engine serves its faults meanwhile);
``engine_ready`` is the daemon's wait for the handshake to have set the engine up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar, cast

from wrennd.sandbox import hugepages
from wrennd.sandbox.environment import Deps
from wrennd.sandbox.errors import SnapshotCorrupt, VmmFailed
from wrennd.sandbox.handover import removal_log
from wrennd.sandbox.live import Live
from wrennd.sandbox.record import SandboxRecord
from wrennd.sandbox.timing import Timings
from wrennd.sandbox.vmstart import jailed, make_jail, start_vmm
from wrennd.uffd.server import SnapshotMemory, UffdServer
from wrennd.vm.api import MemBackend
from wrennd.vm.errors import VmmError
from wrennd.vm.vmm import Vmm

GUEST_IFACE = "eth0"
ROOT_DRIVE = "rootfs"
# A VMM whose load returned has sent its handshake; the server may still be
# setting the engine up (its page size comes from the handshake).
UFFD_READY_TIMEOUT = 10.0
T = TypeVar("T")


def _memory(deps: Deps, rec: SandboxRecord) -> SnapshotMemory:
    """The engine's inputs: the snapshot's mapping (the header's own C array, which the
    engine copies), generation files and prefetch map."""
    snap = deps.snapshots.open(deps.paths(rec.id).snapshot_dir, deps.cfg.store)
    return SnapshotMemory(
        snap.memory_size,
        # The VMM maps (and the engine installs) 2 MiB units for a 2m guest; the
        # header's blocks stay 4 KiB, the granularity of Firecracker's dirty log.
        hugepages.page_size(rec.memory_backing, snap.block_size),
        snap.entries,
        snap.generation_paths,
        snap.prefetch,
        entry_count=snap.entry_count,
        checksums=snap.checksum_paths,
        checksum_block_size=snap.block_size,
    )


async def engine_server(
    deps: Deps, rec: SandboxRecord, *, prefetch: bool, handed: bool
) -> UffdServer:
    """A UFFD server for the sandbox's snapshot (opened through the cache of opened
    snapshots; built off the loop: the fill ranges of a background fill walk the whole
    mapping); ``handed``: for a VMM a previous daemon served, whose removal log is
    read, not emptied (wrennd.sandbox.handover)."""
    cfg, paths = deps.cfg, deps.paths(rec.id)
    memory = await asyncio.to_thread(_memory, deps, rec)
    paths.run.mkdir(parents=True, exist_ok=True)
    return await asyncio.to_thread(
        lambda: UffdServer(
            paths.uffd_socket,
            memory,
            batch_bytes=cfg.uffd_batch_bytes,
            prefetch=prefetch,
            verify_pages=cfg.verify_pages,
            fill=cfg.uffd_fill == "background",
            prefetch_rate=cfg.uffd_fill_rate_bytes,
            remove_log=removal_log(paths.run),
            fresh_log=not handed,
        )
    )


async def prepare_engine(live: Live, deps: Deps, rec: SandboxRecord, t: Timings,
                         prefetch: bool) -> None:  # fmt: skip
    """The snapshot opened and the UFFD server listening (stages ``snapshot_open``,
    ``engine_prepare``)."""
    async with t.stage("snapshot_open", "daemon"):
        # Opened now (a cache hit after a settled pause), so the next stage is the server's.
        await asyncio.to_thread(deps.snapshots.open, deps.paths(rec.id).snapshot_dir,
                                deps.cfg.store)  # fmt: skip
    async with t.stage("engine_prepare", "daemon"):
        live.uffd = await engine_server(deps, rec, prefetch=prefetch, handed=False)
        await live.uffd.start()
        if live.jail is not None:  # the jailed VMM connects as the jail user
            live.jail.own(deps.paths(rec.id).uffd_socket)
        live.serving = asyncio.ensure_future(live.uffd.serve())


def start_engine(
    live: Live, deps: Deps, rec: SandboxRecord, t: Timings, prefetch: bool
) -> asyncio.Future[None] | None:
    """The engine prepared while the rest of the bring-up goes on; None under the
    jailer, where its socket lives in the jail, made once the network exists."""
    if deps.cfg.jail is not None:
        return None
    return asyncio.ensure_future(prepare_engine(live, deps, rec, t, prefetch))


async def together(*steps: Awaitable[T]) -> list[T]:
    """Run independent steps at once; when every one has ended, raise the first failure
    (an undo then sees what each of them made)."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return cast(list[T], results)


async def settle(task: asyncio.Future[None] | None) -> None:
    """Wait for a step running beside a failed one (its own failure is the lesser)."""
    if task is not None:
        with contextlib.suppress(BaseException):
            await task


async def restore(
    live: Live,
    deps: Deps,
    rec: SandboxRecord,
    drive: Path,
    t: Timings,
    prefetch: bool = True,
) -> None:
    """Start a VMM and load the last snapshot with the UFFD engine serving its memory.

    The engine is prepared while the VMM starts, and listens before the load is sent.
    The root drive is pointed at ``drive`` before the VM runs: a clone's disk is not
    the one its template was taken with, and a device path may change between runs."""
    assert live.net is not None
    paths = deps.paths(rec.id)
    vmstate, uffd_socket, drive_arg = str(paths.vmstate), str(paths.uffd_socket), str(drive)
    if deps.cfg.jail is not None:
        async with t.stage("jail", "daemon"):
            jail = await make_jail(live, deps.cfg, rec)
            assert jail is not None
            vmstate, uffd_socket, drive_arg = await jailed(
                jail.restore_files, paths.vmstate, drive, paths.uffd_socket
            )
        await prepare_engine(live, deps, rec, t, prefetch)
    engine = start_engine(live, deps, rec, t, prefetch)
    try:
        vmm = await start_vmm(live, deps, rec, t)
    except BaseException:
        await settle(engine)
        raise
    if engine is not None:
        await engine
    if live.building is not None:
        await live.building  # the tap the load's network override names exists
    await _load(live, vmm, vmstate, uffd_socket, t)
    try:
        async with t.stage("vm_resume", "vmm"):
            await vmm.checked(lambda: vmm.client.patch_drive(ROOT_DRIVE, drive_arg))
            await vmm.checked(vmm.client.resume)
    except VmmError as e:
        raise VmmFailed(f"resuming the loaded VM of {live.sandbox_id}: {e}") from e


async def _load(live: Live, vmm: Vmm, vmstate: str, uffd_socket: str, t: Timings) -> None:
    """``snapshot/load`` with the Uffd backend, then the engine serving the VMM."""
    assert live.net is not None
    overrides = None
    if vmm.client.requests.accepts("SnapshotLoadParams.network_overrides"):
        overrides = {GUEST_IFACE: live.net.tap}
    try:
        async with t.stage("snapshot_load", "vmm"):
            await vmm.load_snapshot(
                vmstate,
                MemBackend("Uffd", uffd_socket),
                track_dirty_pages=True,
                resume_vm=False,
                network_overrides=overrides,
            )
    except VmmError as e:
        live.vmm = None  # a failed load killed it
        raise VmmFailed(f"loading the snapshot of {live.sandbox_id}: {e}") from e
    async with t.stage("engine_ready", "daemon"):
        await _uffd_serving(live)


async def _uffd_serving(live: Live) -> None:
    """Wait until the UFFD server serves the loaded VMM, or say why it does not."""
    assert live.uffd is not None and live.serving is not None
    vmm = live.require_vmm()
    ready = asyncio.ensure_future(live.uffd.ready.wait())
    # A VMM that exits is not waited for until the deadline: it will never connect.
    exited = asyncio.ensure_future(vmm.proc.wait())
    waiters: set[asyncio.Future[Any]] = {ready, live.serving, exited}
    try:
        await asyncio.wait(waiters, timeout=UFFD_READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ready.cancel()
        exited.cancel()
    if live.uffd.ready.is_set():
        return
    if not vmm.proc.running:
        raise VmmFailed(
            f"{live.sandbox_id}: {vmm.proc.exited_error('the VMM exited during the resume')}"
        )
    serving = live.serving
    if serving.done() and not serving.cancelled() and serving.exception() is not None:
        raise VmmFailed(f"{live.sandbox_id}: UFFD handshake failed: {serving.exception()}")
    raise VmmFailed(
        f"{live.sandbox_id}: the VMM loaded but the UFFD server was not serving it"
        f" within {UFFD_READY_TIMEOUT:.0f} s"
    )


def check_memory(live: Live) -> None:
    """Raise SnapshotCorrupt if the engine met a block that fails its checksum
    (it then installed nothing of it and the VMM was stopped)."""
    bad = live.uffd.corruption() if live.uffd is not None else None
    if bad is not None:
        raise SnapshotCorrupt(
            f"{live.sandbox_id}: snapshot memory is damaged: {bad}",
            file=str(bad.generation),
            block=bad.block,
            generation=bad.generation.name,
        )


def corrupt_memory(live: Live, error: BaseException) -> SnapshotCorrupt | None:
    """The SnapshotCorrupt a failed restore really is: a bad block stops the VMM,
    which then fails the load or the guest's start with a less useful error."""
    if isinstance(error, SnapshotCorrupt):
        return None
    try:
        check_memory(live)
    except SnapshotCorrupt as bad:
        return bad
    return None
