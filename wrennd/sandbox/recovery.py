"""Startup recovery: read every state.json and bring each record to a resting state.

A running sandbox whose VMM outlived the previous daemon is adopted
(``adoption``) and keeps running; so is one whose pause the crash interrupted
before the memory header (the commit point) was written: its VM is resumed and
its guest thawed, as a failed pause does.  A pause past that point is completed.
Any other VMM of a previous daemon is stopped (identified by its API socket on
its command line, never by pid alone).  A sandbox whose VMM is gone goes back
to its last snapshot (paused) when it has one, else to error with the reason;
an unfinished create or destroy is completed as a destroy.  Then every stale
network, storage device and snapshot temporary not owned by an adopted sandbox
is cleaned.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

from wrennd.durable import publish
from wrennd.log import kv
from wrennd.network.slots import SlotAllocator
from wrennd.sandbox import adoption, diskpair, jail, teardown, templates
from wrennd.sandbox.environment import Deps, SandboxPaths
from wrennd.sandbox.live import Live
from wrennd.sandbox.record import SandboxRecord, SandboxState
from wrennd.sandbox.timing import Timings
from wrennd.snapshot import SnapshotError
from wrennd.snapshot import recover as recover_store
from wrennd.snapshot.store import read_header

log = logging.getLogger(__name__)
S = SandboxState
STALE_VMM_GRACE = 5.0


def _is_our_vmm(pid: int, api_socket: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.fsencode(str(api_socket)) in argv


def vmms_using(api_socket: Path) -> list[int]:
    """Every process whose command line names ``api_socket``: the record may not name a
    VMM that a crash interrupted between its spawn and the record's next save."""
    needle = os.fsencode(str(api_socket))
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if needle in argv:
                found.append(int(proc.name))
    return sorted(found)


def _wait_gone(pid: int, api_socket: Path, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not _is_our_vmm(pid, api_socket):
            return True
        time.sleep(0.05)
    return False


def stop_stale_vmm(pid: int, api_socket: Path) -> bool:
    """SIGTERM (fcsim and Firecracker clean up), then SIGKILL; True if one was running."""
    if not _is_our_vmm(pid, api_socket):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        if _wait_gone(pid, api_socket, STALE_VMM_GRACE):
            return True
    return True


def finish_interrupted_pause(paths: SandboxPaths, rec: SandboxRecord) -> bool:
    """After a crash mid-pause: if that pause's memory header was committed, publish its
    vmstate and adopt it (True); otherwise drop its leftovers (False)."""
    try:
        header = read_header(paths.snapshot_dir)
    except (OSError, SnapshotError):
        header = None
    # The header is the commit point; its vmstate is still pending, or was published
    # just before the crash (the pause then died releasing its resources).
    committed = (
        header is not None
        and str(header.build_id) != rec.snapshot_build_id
        and (paths.pending_vmstate.exists() or paths.vmstate.exists())
    )
    if committed:
        assert header is not None
        if paths.pending_vmstate.exists():
            publish(paths.pending_vmstate, paths.vmstate)
        rec.generation, rec.snapshot_build_id = header.generation, str(header.build_id)
        rec.need_full = False
    paths.pending_memfile.unlink(missing_ok=True)
    paths.pending_vmstate.unlink(missing_ok=True)
    return committed


def _settle(rec: SandboxRecord) -> str | None:
    """The resting state for a record found at start; None: finish it as a destroy."""
    if rec.state in (S.CREATING, S.STOPPING):
        return None
    if rec.state in (S.RUNNING, S.PAUSING, S.RESUMING):
        was = rec.state.value
        if rec.generation is not None:
            rec.state = S.PAUSED
            rec.error = (
                f"the daemon stopped while the sandbox was {was}; restored to its last "
                f"snapshot (generation {rec.generation})"
            )
        else:
            rec.state = S.ERROR
            rec.error = f"the daemon stopped while the sandbox was {was} and it has no snapshot"
    rec.slot, rec.vmm_pid, rec.vmm_start_time, rec.vmm_api_socket = None, None, None, None
    rec.uffd_served = False
    return rec.error


async def _pair_disks(deps: Deps, disks: list[tuple[SandboxRecord, str | None]]) -> None:
    """With every layer detached: roll disks back to their snapshot, or keep them."""
    for rec, reason in disks:
        try:
            if reason is None:
                assert rec.generation is not None
                await diskpair.keep(deps, rec, rec.generation)
            elif await diskpair.roll_back(deps, rec, reason):
                await asyncio.to_thread(deps.records.save, rec)
        except Exception as e:
            log.error("snapshot disk not paired", extra=kv(sandbox=rec.id, error=e))


async def _reap_simulated_guests(fcsim: Path) -> None:
    """A killed fcsim leaves its guest (a cgroup of processes holding the layer mounted);
    fcsim knows its own, so it is asked to remove them."""
    proc = await asyncio.create_subprocess_exec(
        str(fcsim),
        "--reap-orphans",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        log.error("fcsim --reap-orphans did not finish in 30 s")
        return
    if proc.returncode != 0 or out.strip():
        log.info(
            "simulated guests reaped", extra=kv(rc=proc.returncode, output=out.decode().strip())
        )


async def recover(deps: Deps) -> tuple[list[SandboxRecord], dict[str, Live]]:
    """Every record brought to rest, and the live resources of those adopted."""
    records, bad = await asyncio.to_thread(deps.records.load_all)
    adopted: dict[str, Live] = {}
    paused: set[str] = set()  # pauses the crash interrupted after their commit point
    for rec in records:
        # A pause past its commit point is completed below; one before it is undone.
        paths = deps.paths(rec.id)
        if rec.state == S.PAUSING and await asyncio.to_thread(finish_interrupted_pause, paths, rec):
            paused.add(rec.id)
            continue
        live = await adoption.adopt(deps, rec)
        if live is not None:
            adopted[rec.id] = live
    if deps.cfg.jail is not None:
        # Before anything else touches their disks: every jailed VMM not adopted is
        # stopped (found by its jail: its command line has jail paths).
        jails = await asyncio.to_thread(jail.cleanup_stale, deps.cfg.jail, frozenset(adopted))
        if jails:
            log.warning("stale jails removed", extra=kv(sandboxes=",".join(jails)))
    kept: list[SandboxRecord] = []
    for err in bad:
        # Kept visible (state damaged) so that destroy can remove what it owned.
        log.error("unreadable sandbox record: shown as damaged", extra=kv(error=err))
        if err.sandbox_id is not None:
            kept.append(SandboxRecord.damaged(err.sandbox_id, str(err)))
    # Records whose disk goes back to their snapshot's (a reason) or is kept with it (None).
    disks: list[tuple[SandboxRecord, str | None]] = []
    for rec in records:
        if rec.id in adopted:
            kept.append(rec)
            continue
        paths = deps.paths(rec.id)
        api_socket = paths.vmm_files.api_socket
        pids = set(await asyncio.to_thread(vmms_using, api_socket))
        pids |= {rec.vmm_pid} if rec.vmm_pid is not None else set()
        for pid in sorted(pids):
            if await asyncio.to_thread(stop_stale_vmm, pid, api_socket):
                log.warning("stale vmm stopped", extra=kv(sandbox=rec.id, pid=pid))
        before = rec.state
        completed = False
        if rec.id in paused:
            log.info("interrupted pause completed", extra=kv(sandbox=rec.id))
            rec.state, completed = S.PAUSED, True
        if _settle(rec) is None and rec.state in (S.CREATING, S.STOPPING):
            await teardown.destroy(deps, rec, None, Timings("destroy"))
            log.info("unfinished sandbox removed", extra=kv(sandbox=rec.id, state=before.value))
            continue
        if rec.state == S.PAUSED and before != S.PAUSED and not completed:
            disks.append((rec, f"the daemon stopped while the sandbox was {before.value}"))
        elif rec.state == S.PAUSED and not diskpair.has_kept(deps, rec):
            disks.append((rec, None))  # its layer is still the disk of its snapshot
        await asyncio.to_thread(deps.records.save, rec)
        log.info("sandbox recovered", extra=kv(sandbox=rec.id, was=before, now=rec.state))
        kept.append(rec)
    deps.handover.discard_unclaimed()  # their VMMs are gone or were stopped
    # Always, records or not: a VMM killed after its record was removed (or a record
    # that cannot be read) can leave namespaces behind that would poison their slot.
    slots = [live.slot for live in adopted.values() if live.slot is not None]
    deps.slots = SlotAllocator(deps.slots.capacity, slots)
    await (await deps.network_ready()).cleanup_stale(slots)
    await deps.storage.cleanup_stale(list(adopted))
    await _pair_disks(deps, disks)
    if deps.cfg.vmm.simulated:
        await _reap_simulated_guests(deps.cfg.vmm.binary)
    removed = await asyncio.to_thread(templates.cleanup_temporaries, deps)
    if removed:
        log.info("half-built templates removed", extra=kv(templates=",".join(removed)))
    dirs = [deps.paths(r.id).snapshot_dir for r in kept if deps.paths(r.id).snapshot_dir.exists()]
    dirs += await asyncio.to_thread(templates.snapshot_dirs, deps)
    deps.cfg.store.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(recover_store, dirs, deps.cfg.store)
    return kept, adopted
