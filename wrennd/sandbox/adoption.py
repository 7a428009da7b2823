"""Adoption at start: a sandbox whose VMM outlived the previous daemon keeps running.

A running record names its VMM (pid, start time, API socket: written ahead by
bringup).  When that very process is still alive (checked through a pidfd,
never by pid alone) the daemon takes it over: a Firecracker client on its API
socket, the guest agent's connection on the slot's address, the slot itself,
the storage attachment; nothing that works is touched or rebuilt in the
kernel.  A VMM whose memory was served by the previous daemon's UFFD engine
is adopted only when the fd store handed its uffd back (``handover``): the
new engine serves it from the sandbox's snapshot; otherwise its vCPUs would
wait forever on the next missing page.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from wrennd.guest.client import AgentUnavailable
from wrennd.log import kv
from wrennd.sandbox import jail, pausing, restoring
from wrennd.sandbox.environment import Deps
from wrennd.sandbox.live import Live, guest_client
from wrennd.sandbox.record import SandboxRecord, SandboxState
from wrennd.snapshot import SnapshotError
from wrennd.storage.errors import StorageError
from wrennd.vm.client import FirecrackerClient
from wrennd.vm.errors import VmmError
from wrennd.vm.launcher import VmmProcess
from wrennd.vm.vmm import Vmm

log = logging.getLogger(__name__)
# An adopted guest that does not answer at once is still adopted: a guest call then
# says guest_unavailable, and the operator can pause or destroy it.
HEALTH_TIMEOUT = 5.0
API_TIMEOUT = 30.0


def why_not(rec: SandboxRecord, handed: bool = False) -> str | None:
    """Why a record's VMM cannot be adopted whatever its process; None: it may be.
    ``handed``: the fd store gave back the uffd that serves its memory."""
    if rec.state not in (SandboxState.RUNNING, SandboxState.PAUSING):
        return f"it was {rec.state.value}"
    if rec.uffd_served and not handed:
        return "its memory was served by the previous daemon's UFFD engine (not handed over)"
    if None in (rec.vmm_pid, rec.vmm_start_time, rec.vmm_api_socket, rec.slot):
        return "its record does not name its VMM and slot"
    return None


async def adopt(deps: Deps, rec: SandboxRecord) -> Live | None:
    """The live resources of ``rec`` taken over from a VMM that kept running; None if
    there is none to adopt (the reason is logged; recovery then cleans up)."""
    reason = why_not(rec, deps.handover.has(rec.id))
    files = deps.paths(rec.id).vmm_files
    proc = None
    if reason is None:
        assert rec.vmm_pid is not None and rec.vmm_start_time is not None
        if str(files.api_socket) != rec.vmm_api_socket:
            reason = f"its API socket moved ({rec.vmm_api_socket} -> {files.api_socket})"
        else:
            marker = None if deps.cfg.jail is None else jail.marker(rec.id)
            proc = VmmProcess.adopt(rec.vmm_pid, rec.vmm_start_time, files, marker)
            reason = None if proc is not None else "its VMM is gone or is another process"
    if proc is None:
        if rec.vmm_pid is not None:
            log.info("vmm not adopted", extra=kv(sandbox=rec.id, pid=rec.vmm_pid, why=reason))
        return None
    assert rec.slot is not None
    live = Live(rec.id, slot=rec.slot)
    live.vmm = Vmm(proc, FirecrackerClient(files.api_socket, timeout=API_TIMEOUT))
    if deps.cfg.jail is not None:  # released with the sandbox, as one this daemon made
        live.jail = jail.existing(deps.cfg.jail, rec.id)
    try:
        if rec.uffd_served:
            await _serve_handed(deps, rec, live)
        await _rebuild(deps, rec, live)
        if rec.state == SandboxState.PAUSING:
            await _undo_pause(deps, rec, live)
    except (VmmError, StorageError, OSError, ValueError, SnapshotError) as e:
        log.error("adoption failed: vmm stopped", extra=kv(sandbox=rec.id, error=e))
        with contextlib.suppress(Exception):
            await live.stop_vmm()
        return None
    log.info("sandbox adopted", extra=kv(sandbox=rec.id, pid=proc.pid, slot=rec.slot))
    return live


async def _serve_handed(deps: Deps, rec: SandboxRecord, live: Live) -> None:
    """Serve the VMM's memory again through the uffd the fd store handed back: from
    the same snapshot, with the pages the guest gave back marked removed."""
    run = deps.paths(rec.id).run
    handed = deps.handover.take(rec.id, run)
    if handed is None:
        raise VmmError(f"the hand-over of {rec.id} is incomplete")
    try:
        server = await restoring.engine_server(deps, rec, prefetch=False, handed=True)
        await server.start(listen_socket=False)
    except BaseException:
        handed.close()
        raise
    live.uffd = server
    live.serving = asyncio.ensure_future(
        server.serve_handed(handed.uffd, handed.peer, handed.regions)
    )
    deps.handover.forget_when_done(rec.id, live)  # still stored: dropped when it ends
    ready = asyncio.ensure_future(server.ready.wait())
    await asyncio.wait(
        [ready, live.serving], timeout=API_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
    )
    ready.cancel()
    if not server.ready.is_set():
        if live.serving.done() and live.serving.exception() is not None:
            raise VmmError(f"serving the handed uffd of {rec.id}: {live.serving.exception()}")
        raise VmmError(f"the handed uffd of {rec.id} was not served in {API_TIMEOUT:.0f} s")
    log.info("uffd handed over", extra=kv(sandbox=rec.id, regions=len(handed.regions)))


async def _undo_pause(deps: Deps, rec: SandboxRecord, live: Live) -> None:
    """A pause the crash interrupted before its memory was committed (recovery checked
    the header): resume the VM and thaw the guest, as a failed pause does; running."""
    failed = await pausing.undo_freeze(live)
    if failed is not None:
        raise VmmError(f"the interrupted pause of {rec.id} could not be undone: {failed}")
    rec.state, rec.error = SandboxState.RUNNING, None
    # The crash may have come after the VMM's snapshot reset its dirty bitmap (the record
    # was not saved then): a Diff could miss pages, so the next snapshot is Full.
    rec.need_full = True
    await asyncio.to_thread(deps.records.save, rec)
    log.info("interrupted pause undone: the sandbox runs on", extra=kv(sandbox=rec.id))


async def _rebuild(deps: Deps, rec: SandboxRecord, live: Live) -> None:
    assert live.vmm is not None and live.slot is not None
    vmm = live.vmm
    await vmm.checked(vmm.client.detect_version)
    storage = await deps.storage.record(rec.id)
    if not storage.attached:
        raise StorageError(f"the storage of {rec.id} is not attached")
    live.storage_attached = True
    live.net = (await deps.network_ready()).describe(live.slot)
    live.guest, live.guest_session = guest_client(str(live.net.host_address), deps.cfg.host_netns)
    try:
        await live.guest.wait_healthy(time.monotonic() + HEALTH_TIMEOUT)
    except AgentUnavailable as e:
        log.warning("adopted guest does not answer yet", extra=kv(sandbox=rec.id, error=e))
