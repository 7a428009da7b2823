"""Pause: freeze the guest, snapshot it into fresh files, ingest, free every host resource.

Order (DESIGN.md §4): agent prepare (sync + FIFREEZE), PATCH Paused, snapshot
(Full the first time, Diff after a resume) to fresh paths, ingest into the
generation store, publish the vmstate; only then stop the VMM and detach
storage.  The network's removal, the next prefetch map
(sandbox/prefetching.py) and the disk kept with the snapshot follow the
answer (sandbox/afterpause.py).  A failure before the memory is committed thaws and resumes
the guest, so the sandbox keeps running and nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Literal

from wrennd.durable import publish
from wrennd.guest.client import AgentUnavailable, GuestError
from wrennd.log import kv
from wrennd.sandbox import afterpause
from wrennd.sandbox import jail as jailed
from wrennd.sandbox.environment import Deps, SandboxPaths
from wrennd.sandbox.errors import PauseUndone, PauseUndoneNoSpace, VmmFailed
from wrennd.sandbox.live import Live
from wrennd.sandbox.record import SandboxRecord
from wrennd.sandbox.registry import Registry, Sandbox
from wrennd.sandbox.timing import Timings
from wrennd.snapshot import (
    ChainChangedError,
    Header,
    SnapshotError,
    collapse_in_background,
    ingest_diff,
    ingest_full,
)
from wrennd.vm.errors import VmmError

log = logging.getLogger(__name__)

# The agent thaws by itself if the host has not finished (or undone) a pause by then.
PREPARE_THAW_AFTER = 60.0


def _clear_pending(paths: SandboxPaths) -> None:
    for p in (paths.pending_memfile, paths.pending_vmstate):
        p.unlink(missing_ok=True)


def _publish_vmstate(paths: SandboxPaths) -> None:
    publish(paths.pending_vmstate, paths.vmstate)


def _flush(path: Path) -> None:
    """The file's data on disk now (its publish later then has nothing left to sync)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ingest(kind: str, paths: SandboxPaths, deps: Deps) -> Header:
    paths.snapshot_dir.mkdir(parents=True, exist_ok=True)
    store = deps.cfg.store
    store.mkdir(parents=True, exist_ok=True)
    if kind == "Full":
        return ingest_full(paths.pending_memfile, paths.snapshot_dir, store)
    return ingest_diff(paths.pending_memfile, paths.snapshot_dir, paths.snapshot_dir, store)


async def _snapshot(deps: Deps, rec: SandboxRecord, live: Live, t: Timings) -> tuple[Header, str]:
    vmm = live.require_vmm()
    paths = deps.paths(rec.id)
    kind: Literal["Full", "Diff"] = "Full" if rec.generation is None or rec.need_full else "Diff"
    t.facts["kind"] = kind
    await asyncio.to_thread(_clear_pending, paths)
    async with t.stage("pause_vm", "vmm"):
        await vmm.checked(vmm.client.pause)
    jail = live.jail
    targets = (str(paths.pending_vmstate), str(paths.pending_memfile))
    if jail is not None:
        targets = (jailed.PENDING_VMSTATE, jailed.PENDING_MEMFILE)
    async with t.stage("snapshot", "vmm"):
        await vmm.checked(lambda: vmm.client.create_snapshot(*targets, kind))
    if jail is not None:  # written in the chroot (its filesystem): linked out, not copied
        await asyncio.to_thread(jail.take_out, jailed.PENDING_VMSTATE, paths.pending_vmstate)
        await asyncio.to_thread(jail.take_out, jailed.PENDING_MEMFILE, paths.pending_memfile)
    # From here the VMM's dirty bitmap is reset: until a header holds these
    # pages, the next snapshot must be Full.
    rec.need_full = True
    size = paths.pending_memfile.stat().st_size
    written = paths.pending_memfile.stat().st_blocks * 512
    async with t.stage("ingest", "daemon", memfile_bytes=written):
        # The vmstate's data is synced beside the ingest; it is published after it.
        header, _ = await asyncio.gather(
            asyncio.to_thread(_ingest, kind, paths, deps),
            asyncio.to_thread(_flush, paths.pending_vmstate),
        )
    rec.need_full = False
    async with t.stage("publish", "daemon"):
        await asyncio.to_thread(_publish_vmstate, paths)
    log.info(
        "sandbox snapshot taken",
        extra=kv(sandbox=rec.id, kind=kind, memfile_bytes=size, generation=header.generation),
    )
    return header, kind


def _no_space(error: BaseException) -> bool:
    """The disk (or a quota) was full: here, or in the VMM, whose text is all we get."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(error)
    return "No space left on device" in text or "Disk quota exceeded" in text


async def undo_freeze(live: Live) -> str | None:
    """Resume the VM and thaw the guest; the reason it could not, or None."""
    vmm = live.require_vmm()
    try:
        info = await vmm.checked(vmm.client.describe_instance)
        if info.get("state") == "Paused":
            await vmm.checked(vmm.client.resume)
        await live.require_guest().thaw()
    except (VmmError, AgentUnavailable, GuestError) as e:
        return str(e)
    return None


async def _freeze(rec: SandboxRecord, live: Live, t: Timings) -> None:
    """The agent syncs and freezes the guest's filesystem (thawed again on failure)."""
    try:
        async with t.stage("prepare", "guest"):
            await live.require_guest().prepare_snapshot(thaw_after=PREPARE_THAW_AFTER)
    except (AgentUnavailable, GuestError) as e:
        with contextlib.suppress(AgentUnavailable, GuestError):
            await live.require_guest().thaw()
        raise PauseUndone(f"pause of {rec.id}: the guest could not be frozen: {e}") from e


async def pause(
    deps: Deps, rec: SandboxRecord, live: Live, t: Timings
) -> tuple[Header, Coroutine[None, None, None]]:
    """Take the snapshot, stop the VMM and detach the layer; see the module doc.  The
    rest (network, prefetch map, kept disk) is returned, to be run after the answer
    (sandbox/afterpause.py)."""
    paths = deps.paths(rec.id)
    await _freeze(rec, live, t)
    try:
        header, kind = await _snapshot(deps, rec, live, t)
    except (VmmError, SnapshotError, OSError) as e:
        await asyncio.to_thread(_clear_pending, paths)
        failed = await undo_freeze(live)
        if failed is not None:
            raise VmmFailed(
                f"pause of {rec.id} failed ({e}) and the VM could not be resumed: {failed}"
            ) from e
        undone = PauseUndoneNoSpace if _no_space(e) else PauseUndone
        raise undone(f"pause of {rec.id} failed, the sandbox keeps running: {e}") from e
    async with t.stage("vmm_exit", "vmm"):
        result = await live.stop_vmm()
    async with t.stage("storage", "daemon"):
        await live.detach_storage(deps.storage)
    return header, afterpause.settle(deps, rec, live, result, header, kind)


async def collapse(deps: Deps, registry: Registry, sb: Sandbox) -> None:
    """Collapse a long chain in the background, after the pause has answered (and
    settled: its prefetch map written)."""
    await sb.settled()
    snapshot_dir = deps.paths(sb.id).snapshot_dir
    try:
        header = await collapse_in_background(snapshot_dir, deps.cfg.store)
    except ChainChangedError:
        log.info("collapse superseded by a newer snapshot", extra=kv(sandbox=sb.id))
    except Exception as e:
        log.error("background collapse failed", extra=kv(sandbox=sb.id, error=e))
    else:
        log.info("chain collapsed", extra=kv(sandbox=sb.id, build_id=header.build_id))
        if registry.find(sb.id) is sb:
            sb.record.snapshot_build_id = str(header.build_id)
            await registry.save(sb)
