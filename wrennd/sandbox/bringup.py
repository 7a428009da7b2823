"""Create and resume: build a ``Live`` step by step, releasing all of it on any failure."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from wrennd.log import kv
from wrennd.sandbox import templates
from wrennd.sandbox.context import Deps, Progress
from wrennd.sandbox.live import Live
from wrennd.sandbox.machine import attach_network, boot, connect_guest, restore
from wrennd.sandbox.record import SandboxRecord
from wrennd.snapshot import delete_snapshot

log = logging.getLogger(__name__)


async def _undo(deps: Deps, live: Live) -> None:
    """Release what was made; a failure here is logged, the original error goes up."""
    try:
        await asyncio.shield(live.release(deps.storage, deps.network, deps.slots))
    except Exception as e:
        log.error("cleanup after a failed start failed", extra=kv(sandbox=live.sandbox_id, error=e))


async def create(deps: Deps, rec: SandboxRecord, image: Path, progress: Progress) -> Live:
    """Storage layer, network slot, a booted VM and a healthy, initialised agent."""
    live = Live(rec.id)
    made_layer = False
    try:
        await progress("network", 0, 4)
        await attach_network(live, await deps.network_ready(), deps.slots)
        await progress("storage", 1, 4)
        layer = await deps.storage.create(rec.id, image)
        made_layer = live.storage_attached = True
        await progress("boot", 2, 4)
        await boot(live, deps.cfg, deps.paths(rec.id), rec, layer.drive)
        await progress("agent", 3, 4)
        await connect_guest(live, deps.cfg, rec.env, clock=False)
    except BaseException:
        await _undo(deps, live)
        if made_layer:
            await asyncio.shield(deps.storage.remove(rec.id))
        raise
    await progress("done", 4, 4)
    return live


async def resume(deps: Deps, rec: SandboxRecord, progress: Progress, prefetch: bool = True) -> Live:
    """Slot and network, storage attached, UFFD server, VMM loaded and running, agent init."""
    live = Live(rec.id)
    try:
        await progress("network", 0, 4)
        await attach_network(live, await deps.network_ready(), deps.slots)
        await progress("storage", 1, 4)
        layer = await deps.storage.attach(rec.id)
        live.storage_attached = True
        await progress("load", 2, 4)
        await restore(live, deps.cfg, deps.paths(rec.id), layer.drive, prefetch)
        await progress("agent", 3, 4)
        await connect_guest(live, deps.cfg, rec.env, clock=True)
    except BaseException:
        await _undo(deps, live)
        raise
    stats = live.uffd.stats() if live.uffd is not None else None
    pages = 0 if stats is None else stats.copy_pages + stats.zero_pages
    prefetched = 0 if stats is None else stats.prefetch_pages
    await progress("done", 4, 4, pages_installed=pages, pages_prefetched=prefetched)
    log.info("sandbox resumed", extra=kv(sandbox=rec.id, pages_installed=pages))
    return live


async def clone(deps: Deps, rec: SandboxRecord, template: Path, progress: Progress) -> Live:
    """A new sandbox from a template: its own layer on the template's image, its own
    network, and the template's memory (linked, not copied) served by the UFFD engine."""
    live = Live(rec.id)
    paths = deps.paths(rec.id)
    made_layer = False
    try:
        await progress("network", 0, 4)
        await attach_network(live, await deps.network_ready(), deps.slots)
        await progress("storage", 1, 4)
        layer = await deps.storage.create(rec.id, templates.rootfs_of(template))
        made_layer = live.storage_attached = True
        header = await asyncio.to_thread(
            templates.copy_snapshot,
            templates.snapshot_of(template),
            paths.snapshot_dir,
            deps.cfg.store,
        )
        rec.generation, rec.snapshot_build_id = header.generation, str(header.build_id)
        await progress("load", 2, 4)
        await restore(live, deps.cfg, paths, layer.drive)
        await progress("agent", 3, 4)
        await connect_guest(live, deps.cfg, rec.env, clock=True)
    except BaseException:
        await _undo(deps, live)
        if made_layer:
            await asyncio.shield(deps.storage.remove(rec.id))
        if paths.snapshot_dir.exists():
            await asyncio.shield(
                asyncio.to_thread(delete_snapshot, paths.snapshot_dir, deps.cfg.store)
            )
        raise
    await progress("done", 4, 4)
    return live
