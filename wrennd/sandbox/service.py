"""The sandbox layer as the daemon and the API see it: built from the settings, started,
stopped, and the one way in for the API.

``SandboxService`` holds the registry (lookups), the lifecycle, the image and
template catalogs, and gives guest calls their way to a running sandbox's
agent.  ``from_settings`` blocks (it probes the VMM and the storage backend):
the daemon calls it while wiring, before its event loop runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from wrennd import config, features
from wrennd.guest.client import GuestClient
from wrennd.guest.protocol import CommandSpec
from wrennd.log import kv
from wrennd.network.manager import NetworkManager
from wrennd.network.plan import AddressPlan, Naming
from wrennd.network.slots import SlotAllocator
from wrennd.sandbox import filling, hugepages
from wrennd.sandbox.catalogs import ImageCatalog, TemplateCatalog
from wrennd.sandbox.environment import Deps, HostConfig, SandboxPaths, choose_vmm
from wrennd.sandbox.guestcall import guest_call
from wrennd.sandbox.handover import FdStore, HandOver
from wrennd.sandbox.lifecycle import Lifecycle
from wrennd.sandbox.record import RecordStore
from wrennd.sandbox.registry import Registry, Sandbox
from wrennd.sandbox.scrub import Scrubber
from wrennd.sandbox.sharing import MemorySharing, RunningVmm
from wrennd.sandbox.usage import usage
from wrennd.storage.aio import AsyncStorage
from wrennd.storage.choose import choose_backend
from wrennd.storage.errors import StorageError

log = logging.getLogger(__name__)
SHUTDOWN_PAUSE_CONCURRENCY = 4
# Seconds past an exec's own timeout for the agent to kill the command and answer.
EXEC_REPORT_GRACE = 10.0


class Deadline(Protocol):
    def remaining(self) -> float: ...

    def status(self, text: str) -> None: ...


class SandboxService:
    def __init__(
        self,
        cfg: HostConfig,
        storage: AsyncStorage,
        network: NetworkManager,
        handover: HandOver | None = None,
    ) -> None:
        self.cfg = cfg
        self.storage = storage
        self.deps = Deps(
            cfg,
            storage,
            network,
            SlotAllocator(network.plan.capacity),
            RecordStore(cfg.sandboxes_dir),
            handover or HandOver(),
        )
        self.registry = Registry(self.deps.records)
        self.lifecycle = Lifecycle(self.deps, self.registry)
        self.images = ImageCatalog(self.deps, self.registry)
        self.templates = TemplateCatalog(self.deps, self.registry, self.lifecycle)
        self.scrubber = Scrubber(self.deps, self.registry)

    @classmethod
    def from_settings(
        cls,
        settings: config.Settings,
        fd_store: FdStore | None = None,
        handed: dict[str, int] | None = None,
    ) -> SandboxService:
        """``fd_store``: systemd's, for the hand-over (unused with uffd_handover false);
        ``handed``: the fds it gave back at start, by name."""
        vmm = choose_vmm(settings.firecracker_bin)
        cfg = HostConfig.from_settings(settings, vmm)
        if cfg.ksm.mode != "off" and not features.ksm().available:
            raise ValueError(f"ksm = {cfg.ksm.mode!r} cannot work here: {features.ksm().reason}")
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        storage = AsyncStorage(choose_backend(settings.storage_backend, settings.state_dir))
        network = NetworkManager(
            AddressPlan(settings.host_network, settings.veth_network),
            Naming(prefix=settings.network_prefix, table=settings.nft_table),
            host_netns=settings.host_netns,
            tap_owner=None if cfg.jail is None else cfg.jail.uid,
        )
        store = fd_store if settings.uffd_handover else None
        return cls(cfg, storage, network, HandOver(store, handed))

    async def start(self) -> None:
        await self.lifecycle.start()
        self.scrubber.start()
        await self.sharing.start(self.running_vmms)

    async def close(self) -> None:
        """Stop background work and the storage workers (running VMMs are left alone)."""
        await self.sharing.close()
        await self.scrubber.stop()
        await self.lifecycle.close()
        await self.storage.aclose()

    @property
    def sharing(self) -> MemorySharing:
        return self.deps.sharing

    def running_vmms(self) -> list[RunningVmm]:
        """Every VMM of a sandbox with one running, for the KSM policy's counts."""
        out = []
        for sb in self.registry:
            vmm = None if sb.live is None else sb.live.vmm
            if vmm is not None and vmm.proc.running:
                out.append(RunningVmm(sb.id, vmm.proc.pid, sb.record.memory_mib))
        return out

    async def shutdown(self, ctx: Deadline, keep: bool = False) -> None:
        """Pause every running sandbox (bounded concurrency), then stop background work.

        ``keep``: leave running every sandbox that can run without this daemon, for the
        next one to adopt; those whose memory this daemon's UFFD engine serves are paused
        (they cannot run on without it)."""
        ctx.status("stopping: pausing sandboxes")

        def needs(sb: Sandbox) -> bool:  # its VM cannot run without this daemon's engine
            return sb.record.uffd_served

        if keep:
            kept = [sb.id for sb in self.registry if sb.live is not None and not needs(sb)]
            log.info("sandboxes left running", extra=kv(kept=len(kept), ids=",".join(kept)))
        outcome = await self.lifecycle.pause_all(
            SHUTDOWN_PAUSE_CONCURRENCY, needs if keep else None
        )
        failed = {k: v for k, v in outcome.items() if v != "paused"}
        log.info("sandboxes paused for shutdown", extra=kv(paused=len(outcome) - len(failed)))
        await self.close()
        if failed:
            raise RuntimeError(f"{len(failed)} sandboxes could not be paused: {failed}")

    # --- the API's way in ----------------------------------------------------------
    def paths(self, sandbox_id: str) -> SandboxPaths:
        return self.deps.paths(sandbox_id)

    @contextlib.asynccontextmanager
    async def guest(
        self, sandbox_id: str, within: float | None = None
    ) -> AsyncIterator[GuestClient]:
        """The agent of a running sandbox (WrongState otherwise) for the block, which holds
        the sandbox's lock shared and ends within ``within`` seconds (default: the host's
        ``guest_timeout``) with GuestUnavailable; the guest's errors leave it lifted."""
        limit = self.cfg.guest_timeout if within is None else within
        async with guest_call(self.registry, sandbox_id, limit) as client:
            yield client

    def engine_state(self, sb: Sandbox) -> dict[str, Any] | None:
        """The UFFD engine of a running sandbox: serving, filling (percent), detaching or
        detached (None: no engine)."""
        return None if sb.live is None else filling.engine_state(sb.live, sb.record)

    def huge_pages(self) -> dict[str, Any]:
        """The host's 2 MiB page pool and what this daemon's 2 MiB guests owe it."""
        return hugepages.stats(sb.record for sb in self.registry)

    def command_deadline(self, spec: CommandSpec) -> float:
        """How long an exec may take: its own timeout plus the time to report it, or
        the host's default."""
        if spec.timeout is None:
            return self.cfg.guest_timeout
        return spec.timeout + EXEC_REPORT_GRACE

    async def usage(self, sb: Sandbox) -> dict[str, Any]:
        """Host disk (allocated blocks of the layer and the snapshot) and resident memory,
        once the last pause has settled (its disk copy is half made until then)."""
        await sb.settled()
        layer: Path | None = None
        base: Path | None = None
        try:
            rootfs = await self.storage.record(sb.id)
            layer, base = rootfs.layer, rootfs.base_image
        except StorageError:
            pass
        live = sb.live
        pid = live.vmm.proc.pid if live is not None and live.vmm is not None else None
        return await asyncio.to_thread(usage, self.paths(sb.id).state, layer, pid, base)
