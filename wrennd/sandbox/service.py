"""The sandbox manager as the daemon runs it: built from the settings, started, stopped.

``SandboxService.from_settings`` blocks (it probes the VMM and the storage
backend): the daemon calls it while wiring, before its event loop runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from wrennd import config
from wrennd.log import kv
from wrennd.network.manager import NetworkManager
from wrennd.network.plan import AddressPlan, Naming
from wrennd.sandbox.host import HostConfig, choose_vmm
from wrennd.sandbox.manager import SandboxManager
from wrennd.storage.aio import AsyncStorage
from wrennd.storage.choose import choose_backend

log = logging.getLogger(__name__)
SHUTDOWN_PAUSE_CONCURRENCY = 4


class Deadline(Protocol):
    def remaining(self) -> float: ...

    def status(self, text: str) -> None: ...


@dataclass
class SandboxService:
    manager: SandboxManager
    storage: AsyncStorage

    @classmethod
    def from_settings(cls, settings: config.Settings) -> SandboxService:
        vmm = choose_vmm(settings.firecracker_bin)
        cfg = HostConfig.from_settings(settings, vmm)
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        storage = AsyncStorage(choose_backend(settings.storage_backend, settings.state_dir))
        network = NetworkManager(
            AddressPlan(settings.host_network, settings.veth_network),
            Naming(prefix=settings.network_prefix, table=settings.nft_table),
            host_netns=settings.host_netns,
        )
        return cls(SandboxManager(cfg, storage, network), storage)

    async def start(self) -> None:
        await self.manager.start()

    async def shutdown(self, ctx: Deadline) -> None:
        """Pause every running sandbox (bounded concurrency), then stop background work."""
        ctx.status("stopping: pausing sandboxes")
        outcome = await self.manager.pause_all(SHUTDOWN_PAUSE_CONCURRENCY)
        failed = {k: v for k, v in outcome.items() if v != "paused"}
        log.info("sandboxes paused for shutdown", extra=kv(paused=len(outcome) - len(failed)))
        await self.manager.close()
        await self.storage.aclose()
        if failed:
            raise RuntimeError(f"{len(failed)} sandboxes could not be paused: {failed}")
