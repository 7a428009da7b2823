"""What every lifecycle step uses: host config, storage, network, slots, records."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from wrennd.network.manager import NetworkManager
from wrennd.network.slots import SlotAllocator
from wrennd.sandbox.host import HostConfig
from wrennd.sandbox.paths import SandboxPaths
from wrennd.sandbox.record import RecordStore
from wrennd.storage.aio import AsyncStorage


class Progress(Protocol):
    """``progress(stage, done, total, **facts)``: long work reports how far it got (steps),
    with facts such as bytes ingested or pages prefetched."""

    def __call__(self, stage: str, done: int, total: int, **facts: int) -> Awaitable[None]: ...


async def no_progress(stage: str, done: int, total: int, **facts: int) -> None:
    return None


@dataclass
class Deps:
    cfg: HostConfig
    storage: AsyncStorage
    network: NetworkManager
    slots: SlotAllocator
    records: RecordStore
    _network_started: bool = False
    _network_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def network_ready(self) -> NetworkManager:
        """The network manager, started on first use: a daemon that never runs a
        sandbox never touches the host's nftables or sysctls."""
        async with self._network_lock:
            if not self._network_started:
                await self.network.start()
                self._network_started = True
        return self.network

    def paths(self, sandbox_id: str) -> SandboxPaths:
        return SandboxPaths.of(self.cfg.state_dir, self.cfg.run_dir, sandbox_id)
