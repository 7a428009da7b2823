"""Destroy: stop the VMM, remove the layer, the network, the snapshot and the record."""

from __future__ import annotations

import asyncio
import contextlib
import shutil

from wrennd.sandbox.environment import Deps
from wrennd.sandbox.live import Live
from wrennd.sandbox.record import SandboxRecord
from wrennd.sandbox.timing import Timings
from wrennd.snapshot import delete_snapshot
from wrennd.storage.errors import SandboxStorageNotFound


def _remove_files(deps: Deps, sandbox_id: str) -> None:
    paths = deps.paths(sandbox_id)
    deps.snapshots.forget(paths.snapshot_dir)
    if paths.snapshot_dir.exists():
        delete_snapshot(paths.snapshot_dir, deps.cfg.store)
    shutil.rmtree(paths.run, ignore_errors=True)
    if paths.state.exists():
        deps.records.remove(sandbox_id)


async def destroy(deps: Deps, rec: SandboxRecord, live: Live | None, t: Timings) -> None:
    """Everything the sandbox holds goes; what is already gone is skipped."""
    if live is not None:
        async with t.stage("vmm_exit", "vmm"):
            await live.stop_vmm()
        async with t.stage("network", "daemon"):
            await live.remove_network(deps.network, deps.slots)
    elif rec.slot is not None:
        async with t.stage("network", "daemon"):
            await (await deps.network_ready()).remove(rec.slot)
    async with t.stage("storage", "daemon"):
        with contextlib.suppress(SandboxStorageNotFound):
            await deps.storage.remove(rec.id)
    async with t.stage("files", "daemon"):
        await asyncio.to_thread(_remove_files, deps, rec.id)
