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

from wrennd.guest.client import AgentUnavailable, GuestError
from wrennd.log import kv
from wrennd.network.errors import SlotsExhausted
from wrennd.sandbox import diskpair, hugepages, templates
from wrennd.sandbox.environment import Deps, HostConfig
from wrennd.sandbox.errors import GuestFailed, NoCapacity, VmmFailed
from wrennd.sandbox.live import Live, guest_client
from wrennd.sandbox.record import SandboxRecord
from wrennd.sandbox.restoring import (
    GUEST_IFACE,
    ROOT_DRIVE,
    check_memory,
    corrupt_memory,
    restore,
    settle,
    together,
)
from wrennd.sandbox.timing import Timings
from wrennd.sandbox.vmstart import jailed, make_jail, record_ahead, save, start_vmm, unheld
from wrennd.snapshot import delete_snapshot
from wrennd.vm.errors import VmmError
from wrennd.vm.kernel import initrd_path

log = logging.getLogger(__name__)


async def attach_network(
    live: Live, deps: Deps, rec: SandboxRecord, on_namespace: Callable[[], None] | None = None
) -> None:
    """A slot, written to the record before its namespace, links and rules exist."""
    try:
        live.slot = deps.slots.allocate()
    except SlotsExhausted as e:
        raise NoCapacity("network slots", str(e)) from e
    rec.slot = live.slot
    await save(deps, rec)
    live.net = await (await deps.network_ready()).create(live.slot, on_namespace)


def boot_args(record: SandboxRecord, ip_arg: str) -> str:
    return f"console=ttyS0 reboot=k panic=1 pci=off {ip_arg} wrenn.hostname={record.id}"


async def boot(live: Live, deps: Deps, record: SandboxRecord, drive: Path, t: Timings) -> None:
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
        kernel_arg, initrd_jailed, drive_arg = await jailed(
            jail.boot_files, cfg.kernel, initrd, drive
        )
        initrd_arg = initrd_jailed or None
    vmm = await start_vmm(live, deps, record, t)
    c = vmm.client
    if live.building is not None:
        await live.building  # the tap exists
    try:
        async with t.stage("boot", "vmm"):
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


async def _undo(deps: Deps, live: Live) -> None:
    """Release what was made; a failure here is logged, the original error goes up."""
    await settle(live.building)  # a network still being made is removed once made
    try:
        await asyncio.shield(live.release(deps.storage, deps.network, deps.slots))
    except Exception as e:
        log.error("cleanup after a failed start failed", extra=kv(sandbox=live.sandbox_id, error=e))


async def _connect(live: Live, deps: Deps, rec: SandboxRecord, t: Timings, clock: bool) -> None:
    async with t.stage("agent", "guest"):
        await connect_guest(live, deps.cfg, rec.env, clock=clock)
        if live.uffd is not None:
            check_memory(live)


async def _host_side(
    live: Live, deps: Deps, rec: SandboxRecord, t: Timings, image: Path | None, served: bool
) -> Path:
    """Network and storage at once (neither needs the other): the slot, namespace and
    rules; a new layer on ``image``, or the sandbox's own attached again (None).

    Returns once the layer is ready and the namespace exists, which is all a VMM needs
    to be started (``live.net`` names it); the links and rules are still being made
    (``live.building``, awaited before the VMM uses its tap)."""
    loop = asyncio.get_running_loop()
    namespace = asyncio.Event()
    record_ahead(deps, rec, served)  # saved with the slot

    def exists() -> None:  # in the building thread
        loop.call_soon_threadsafe(namespace.set)

    async def network() -> None:
        async with t.stage("network", "daemon"):
            await attach_network(live, deps, rec, exists)

    async def storage() -> Path:
        async with t.stage("storage", "daemon"):
            if image is None:
                layer = await deps.storage.attach(rec.id)
            else:
                layer = await deps.storage.create(rec.id, image)
            live.storage_attached = True
            await unheld(layer.drive)
            return layer.drive

    live.building = asyncio.ensure_future(network())
    drive = await storage()
    made = asyncio.ensure_future(namespace.wait())
    try:
        await asyncio.wait({made, live.building}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        made.cancel()
    if live.building.done():
        live.building.result()  # its failure, if it failed
    if live.net is None:
        assert live.slot is not None
        live.net = deps.network.describe(live.slot)
    return drive


async def create(deps: Deps, rec: SandboxRecord, image: Path, t: Timings) -> Live:
    """Storage layer, network slot, a booted VM and a healthy, initialised agent."""
    live = Live(rec.id)
    try:
        drive = await _host_side(live, deps, rec, t, image, served=False)
        await boot(live, deps, rec, drive, t)
        await _connect(live, deps, rec, t, clock=False)
    except BaseException:
        made_layer = live.storage_attached  # undo detaches it
        await _undo(deps, live)
        if made_layer:
            await asyncio.shield(deps.storage.remove(rec.id))
        raise
    return live


async def resume(deps: Deps, rec: SandboxRecord, t: Timings, prefetch: bool = True) -> Live:
    """Slot and network with storage attached at once; then the UFFD engine prepared
    while the VMM starts (restoring.restore), the VMM loaded and running, and the agent
    initialised.  The engine's preparation (Python, holding the GIL much of the time)
    is not run beside the namespace's creation, which the VMM's start waits for."""
    live = Live(rec.id)
    try:
        drive = await _host_side(live, deps, rec, t, None, served=True)
        await restore(live, deps, rec, drive, t, prefetch)
        await _connect(live, deps, rec, t, clock=True)
    except BaseException as e:
        bad = corrupt_memory(live, e)
        await _undo(deps, live)
        if bad is not None:
            raise bad from e
        raise
    return live


def installed(live: Live) -> dict[str, int]:
    """The pages the engine installed so far, and how many of them by prefetch."""
    stats = live.uffd.stats() if live.uffd is not None else None
    if stats is None:
        return {"pages_installed": 0, "pages_prefetched": 0}
    pages = stats.copy_pages + stats.zero_pages
    return {"pages_installed": pages, "pages_prefetched": stats.prefetch_pages}


async def clone(deps: Deps, rec: SandboxRecord, template: Path, t: Timings) -> Live:
    """A new sandbox from a template: its own layer on the template's image, its own
    network, and the template's memory (linked, not copied) served by the UFFD engine."""
    live = Live(rec.id)
    paths = deps.paths(rec.id)
    try:
        drive, _ = await together(
            _host_side(live, deps, rec, t, templates.rootfs_of(template), served=True),
            _copy_snapshot(deps, rec, template, t),
        )
        assert isinstance(drive, Path) and rec.generation is not None
        # Nothing ran on the new layer yet: it is the disk of the template's snapshot.
        async with t.stage("disk_keep", "daemon"):
            await diskpair.keep(deps, rec, rec.generation)
        await restore(live, deps, rec, drive, t)
        await _connect(live, deps, rec, t, clock=True)
    except BaseException as e:
        bad = corrupt_memory(live, e)
        made_layer = live.storage_attached  # undo detaches it
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
    return live


async def _copy_snapshot(deps: Deps, rec: SandboxRecord, template: Path, t: Timings) -> None:
    """The template's snapshot linked into the clone's own directory."""
    async with t.stage("snapshot_copy", "daemon"):
        header = await asyncio.to_thread(
            templates.copy_snapshot,
            templates.snapshot_of(template),
            deps.paths(rec.id).snapshot_dir,
            deps.cfg.store,
        )
    rec.generation, rec.snapshot_build_id = header.generation, str(header.build_id)
