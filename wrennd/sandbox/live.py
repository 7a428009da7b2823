"""The host resources of a sandbox whose VMM is running, and how they are released.

A ``Live`` is built step by step by create and resume; ``release`` undoes
whatever was built, in reverse, whichever step failed.  Nothing here changes
a record: callers decide the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from wrennd.guest.client import GuestClient
from wrennd.log import kv
from wrennd.network import nsutil
from wrennd.network.manager import NetworkManager, SandboxNetwork
from wrennd.network.slots import SlotAllocator
from wrennd.sandbox.jail import Jail
from wrennd.storage.aio import AsyncStorage
from wrennd.uffd.server import ServeResult, UffdServer
from wrennd.vm.vmm import Vmm

log = logging.getLogger(__name__)

AGENT_PORT = 49983
# Firecracker exits at once on SIGTERM; fcsim first stops its guest (up to 5 s).
VMM_STOP_GRACE = 15.0
# A jail is empty once Firecracker exits; fcsim's guest helper may need a moment more.
JAIL_SETTLE = 5.0


def guest_client(
    address: str, host_netns: Path | None
) -> tuple[GuestClient, aiohttp.ClientSession | None]:
    """A client for the agent at the sandbox's host-reachable address.

    With ``host_netns`` (tests, benchmarks) the connections are made from
    that namespace, where the address is routed."""
    url = f"http://{address}:{AGENT_PORT}"
    if host_netns is None:
        return GuestClient(url), None
    netns = host_netns

    def make_socket(addr_info: Any) -> socket.socket:
        return nsutil.socket_in(netns, addr_info[0], addr_info[1])

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(socket_factory=make_socket))
    return GuestClient(url, session=session), session


@dataclass
class Live:
    """What a running sandbox holds; every field is set once that step succeeded."""

    sandbox_id: str
    slot: int | None = None
    net: SandboxNetwork | None = None
    storage_attached: bool = False
    vmm: Vmm | None = None
    guest: GuestClient | None = None
    guest_session: aiohttp.ClientSession | None = None  # ours to close (host_netns)
    uffd: UffdServer | None = None
    serving: asyncio.Future[ServeResult] | None = None
    jail: Jail | None = None  # the VMM's chroot and cgroup under the jailer
    # The network's links and rules still being made once its namespace exists (and
    # ``net`` names it): awaited before the VMM uses the tap.
    building: asyncio.Future[None] | None = field(default=None, repr=False)
    stopping: bool = False
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)
    filler: asyncio.Task[None] | None = field(default=None, repr=False)

    def require_guest(self) -> GuestClient:
        if self.guest is None:  # pragma: no cover - a running sandbox always has one
            raise RuntimeError(f"sandbox {self.sandbox_id} has no guest connection")
        return self.guest

    def require_vmm(self) -> Vmm:
        if self.vmm is None:  # pragma: no cover - a running sandbox always has one
            raise RuntimeError(f"sandbox {self.sandbox_id} has no VMM")
        return self.vmm

    async def stop_vmm(self) -> ServeResult | None:
        """Stop the VMM and, when it was served by the UFFD engine, collect the engine's end."""
        self.stopping = True
        if self.filler is not None:
            self.filler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.filler
            self.filler = None
        if self.watcher is not None:
            self.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watcher
            self.watcher = None
        if self.guest is not None:
            await self.guest.close()
            self.guest = None
        if self.guest_session is not None:
            await self.guest_session.close()
            self.guest_session = None
        if self.vmm is not None:
            await self.vmm.close(grace=VMM_STOP_GRACE)
            self.vmm = None
        result = None
        if self.serving is not None and self.uffd is not None and not self.uffd.ready.is_set():
            # The VMM is gone and never handed its memory over: nobody will connect now.
            self.serving.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.serving
            self.serving = None
        if self.serving is not None:
            try:
                result = await asyncio.wait_for(asyncio.shield(self.serving), 10)
            except Exception as e:
                log.warning("uffd server ended badly", extra=kv(sandbox=self.sandbox_id, error=e))
            self.serving = None
        if self.uffd is not None:
            if self.uffd.engine is not None:
                self.uffd.stop()
            await self.uffd.close()
            self.uffd = None
        if self.jail is not None:
            await asyncio.to_thread(self.jail.remove, JAIL_SETTLE)
            self.jail = None
        return result

    async def detach_storage(self, storage: AsyncStorage) -> None:
        if self.storage_attached:
            await storage.detach(self.sandbox_id)
            self.storage_attached = False

    async def remove_network(self, network: NetworkManager, slots: SlotAllocator) -> None:
        if self.slot is not None:
            await network.remove(self.slot)
            slots.release(self.slot)
            self.slot = None
            self.net = None

    async def release(
        self, storage: AsyncStorage, network: NetworkManager, slots: SlotAllocator
    ) -> ServeResult | None:
        """Stop the VMM, detach storage, remove the network, free the slot (what exists)."""
        result = await self.stop_vmm()
        await self.detach_storage(storage)
        await self.remove_network(network, slots)
        return result
