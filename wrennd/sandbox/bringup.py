"""Bring a sandbox's VM up: a fresh boot (create), a restore of its snapshot (resume),
or a restore of a template's snapshot (clone).

Each fills in a ``Live`` step by step (network, storage, VMM, guest) and, when
a later step fails, releases exactly what was made.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wrennd.guest.client import AgentUnavailable, GuestError
from wrennd.log import kv
from wrennd.network.errors import SlotsExhausted
from wrennd.sandbox import diskpair, hugepages, templates
from wrennd.sandbox.environment import Deps, HostConfig, Progress
from wrennd.sandbox.errors import GuestFailed, NoCapacity, SnapshotCorrupt, VmmFailed
from wrennd.sandbox.handover import removal_log
from wrennd.sandbox.jail import Jail
from wrennd.sandbox.live import Live, guest_client
from wrennd.sandbox.record import SandboxRecord
from wrennd.snapshot import delete_snapshot, open_snapshot
from wrennd.storage import holders
from wrennd.uffd.server import SnapshotMemory, UffdServer
from wrennd.vm.api import MemBackend
from wrennd.vm.errors import JailerError, VmmError
from wrennd.vm.identity import start_time
from wrennd.vm.kernel import initrd_path
from wrennd.vm.launcher import FirecrackerArgs
from wrennd.vm.vmm import Vmm

log = logging.getLogger(__name__)
GUEST_IFACE = "eth0"
ROOT_DRIVE = "rootfs"
# A VMM whose load returned has sent its handshake; the server may still be
# setting the engine up (its page size comes from the handshake).
UFFD_READY_TIMEOUT = 10.0


async def save(deps: Deps, rec: SandboxRecord) -> None:
    await asyncio.to_thread(deps.records.save, rec)


async def attach_network(live: Live, deps: Deps, rec: SandboxRecord) -> None:
    """A slot, written to the record before its namespace, links and rules exist."""
    try:
        live.slot = deps.slots.allocate()
    except SlotsExhausted as e:
        raise NoCapacity("network slots", str(e)) from e
    rec.slot = live.slot
    await save(deps, rec)
    live.net = await (await deps.network_ready()).create(live.slot)


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


async def _jailed(place: Callable[..., tuple[str, ...]], *files: Path | None) -> tuple[str, ...]:
    """Place files in the jail (blocking); their jail paths."""
    try:
        return await asyncio.to_thread(place, *files)
    except JailerError as e:
        raise VmmFailed(str(e)) from e


async def start_vmm(live: Live, deps: Deps, rec: SandboxRecord, drive: Path) -> Vmm:
    """A VMM for a drive nobody holds, recorded ahead: its API socket before the spawn,
    its pid and start time as soon as it exists."""
    assert live.net is not None
    await asyncio.to_thread(holders.require_unheld, drive)
    files = deps.paths(rec.id).vmm_files
    args = FirecrackerArgs(deps.cfg.vmm.binary, live.sandbox_id.replace("-", "_"), files)
    argv = args.argv()
    netns: Path | None = live.net.netns_path
    if live.jail is not None:
        # The jailer joins the namespace itself (--netns), then drops to the jail user.
        argv, netns = live.jail.argv(args), None
        await asyncio.to_thread(live.jail.own_files, files)
    argv = deps.sharing.wrap(argv, rec.template)  # KSM: the mark survives the jailer's exec
    rec.vmm_api_socket, rec.vmm_pid, rec.vmm_start_time = str(files.api_socket), None, None
    await save(deps, rec)

    async def spawned(pid: int) -> None:
        rec.vmm_pid, rec.vmm_start_time = pid, start_time(pid)
        await save(deps, rec)

    try:
        live.vmm = await Vmm.start(argv, files, netns_path=netns, on_spawn=spawned)
    except VmmError as e:
        raise VmmFailed(f"starting the VMM for {live.sandbox_id}: {e}") from e
    deps.sharing.spawned()
    return live.vmm


def boot_args(record: SandboxRecord, ip_arg: str) -> str:
    return f"console=ttyS0 reboot=k panic=1 pci=off {ip_arg} wrenn.hostname={record.id}"


async def boot(live: Live, deps: Deps, record: SandboxRecord, drive: Path) -> None:
    """Configure and start a fresh VM from the sandbox's root drive."""
    assert live.net is not None
    cfg = deps.cfg
    tap = live.net.tap
    # A kernel made from Debian's package boots through its own initrd (vm.kernel).
    initrd = initrd_path(cfg.kernel)
    kernel_arg, drive_arg = str(cfg.kernel), str(drive)
    initrd_arg = None if initrd is None else str(initrd)
    jail = await make_jail(live, cfg, record)
    if jail is not None:
        kernel_arg, initrd_jailed, drive_arg = await _jailed(
            jail.boot_files, cfg.kernel, initrd, drive
        )
        initrd_arg = initrd_jailed or None
    record.uffd_served = False
    vmm = await start_vmm(live, deps, record, drive)
    c = vmm.client
    try:
        await vmm.checked(
            lambda: c.put_machine_config(
                record.vcpus,
                record.memory_mib,
                track_dirty_pages=True,
                huge_pages=hugepages.huge_pages_config(record.memory_backing),
            )
        )
        args = boot_args(record, live.net.kernel_ip_arg)
        await vmm.checked(lambda: c.put_boot_source(kernel_arg, args, initrd_arg))
        await vmm.checked(lambda: c.put_drive(ROOT_DRIVE, drive_arg, is_root_device=True))
        await vmm.checked(lambda: c.put_network_interface(GUEST_IFACE, tap))
        await vmm.checked(c.start)
    except VmmError as e:
        raise VmmFailed(f"booting {record.id}: {e}") from e


async def restore(
    live: Live, deps: Deps, rec: SandboxRecord, drive: Path, prefetch: bool = True
) -> None:
    """Start a VMM and load the last snapshot with the UFFD engine serving its memory.

    The root drive is pointed at ``drive`` before the VM runs: a clone's disk is not
    the one its template was taken with, and a device path may change between runs."""
    assert live.net is not None
    cfg, paths = deps.cfg, deps.paths(rec.id)
    vmstate, uffd_socket, drive_arg = str(paths.vmstate), str(paths.uffd_socket), str(drive)
    jail = await make_jail(live, cfg, rec)
    if jail is not None:
        vmstate, uffd_socket, drive_arg = await _jailed(
            jail.restore_files, paths.vmstate, drive, paths.uffd_socket
        )
    live.uffd = await engine_server(deps, rec, prefetch=prefetch, handed=False)
    await live.uffd.start()
    if jail is not None:
        jail.own(paths.uffd_socket)  # the jailed VMM connects as the jail user
    live.serving = asyncio.ensure_future(live.uffd.serve())
    rec.uffd_served = True  # saved with the VMM's socket, before it is spawned
    vmm = await start_vmm(live, deps, rec, drive)
    overrides = None
    if vmm.client.requests.accepts("SnapshotLoadParams.network_overrides"):
        overrides = {GUEST_IFACE: live.net.tap}
    try:
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
    await _uffd_serving(live)
    try:
        await vmm.checked(lambda: vmm.client.patch_drive(ROOT_DRIVE, drive_arg))
        await vmm.checked(vmm.client.resume)
    except VmmError as e:
        raise VmmFailed(f"resuming the loaded VM of {live.sandbox_id}: {e}") from e


async def engine_server(
    deps: Deps, rec: SandboxRecord, *, prefetch: bool, handed: bool
) -> UffdServer:
    """A UFFD server for the sandbox's snapshot; ``handed``: for a VMM a previous daemon
    served, whose removal log is read, not emptied (wrennd.sandbox.handover)."""
    cfg, paths = deps.cfg, deps.paths(rec.id)
    snap = await asyncio.to_thread(open_snapshot, paths.snapshot_dir, cfg.store)
    memory = SnapshotMemory(
        snap.memory_size,
        # The VMM maps (and the engine installs) 2 MiB units for a 2m guest; the
        # header's blocks stay 4 KiB, the granularity of Firecracker's dirty log.
        hugepages.page_size(rec.memory_backing, snap.block_size),
        list(snap.header.mapping),
        snap.generation_paths,
        snap.prefetch,
        checksums=snap.checksum_paths,
        checksum_block_size=snap.block_size,
    )
    paths.run.mkdir(parents=True, exist_ok=True)
    return UffdServer(
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


async def connect_guest(live: Live, cfg: HostConfig, env: dict[str, str], *, clock: bool) -> None:
    """Wait for the agent's /health on the host-reachable address, then /init it."""
    assert live.net is not None
    live.guest, live.guest_session = guest_client(str(live.net.host_address), cfg.host_netns)
    deadline = time.monotonic() + cfg.boot_timeout
    try:
        await live.guest.wait_healthy(deadline)
        await live.guest.init(env, time_ns=time.time_ns() if clock else None)
    except (AgentUnavailable, GuestError) as e:
        vmm = live.vmm
        if vmm is not None and not vmm.proc.running:
            raise VmmFailed(str(vmm.proc.exited_error("the guest never answered"))) from e
        raise GuestFailed(f"guest agent of {live.sandbox_id}: {e}") from e


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
        await attach_network(live, deps, rec)
        await progress("storage", 1, 4)
        layer = await deps.storage.create(rec.id, image)
        made_layer = live.storage_attached = True
        await progress("boot", 2, 4)
        await boot(live, deps, rec, layer.drive)
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
        await attach_network(live, deps, rec)
        await progress("storage", 1, 4)
        layer = await deps.storage.attach(rec.id)
        live.storage_attached = True
        await progress("load", 2, 4)
        await restore(live, deps, rec, layer.drive, prefetch)
        await progress("agent", 3, 4)
        await connect_guest(live, deps.cfg, rec.env, clock=True)
        check_memory(live)
    except BaseException as e:
        bad = corrupt_memory(live, e)
        await _undo(deps, live)
        if bad is not None:
            raise bad from e
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
        await attach_network(live, deps, rec)
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
        # Nothing ran on the new layer yet: it is the disk of the template's snapshot.
        await diskpair.keep(deps, rec, header.generation)
        await progress("load", 2, 4)
        await restore(live, deps, rec, layer.drive)
        await progress("agent", 3, 4)
        await connect_guest(live, deps.cfg, rec.env, clock=True)
        check_memory(live)
    except BaseException as e:
        bad = corrupt_memory(live, e)
        await _undo(deps, live)
        if made_layer:
            await asyncio.shield(deps.storage.remove(rec.id))
        if paths.snapshot_dir.exists():
            await asyncio.shield(
                asyncio.to_thread(delete_snapshot, paths.snapshot_dir, deps.cfg.store)
            )
        if bad is not None:
            raise bad from e
        raise
    await progress("done", 4, 4)
    return live
