"""Fixtures for the network tests: unique names, and cleanup even when a test fails.

Every namespace a test makes is named with a per-run prefix, so concurrent
runs and the daemon's own ``wrn-`` namespaces never collide, and is removed
at teardown whatever happened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from wrennd.network import nsutil
from wrennd.network.manager import NetworkManager
from wrennd.network.plan import Naming
from wrennd_sim.network_testbed import TestBed


@pytest.fixture
def prefix() -> Iterator[str]:
    """A short unique name prefix (interface names have 15 characters)."""
    p = f"wt{secrets.token_hex(2)}-"
    yield p
    for name in nsutil.list_named():
        if name.startswith(p):
            nsutil.remove(name)


@dataclasses.dataclass
class World:
    """A host namespace with an uplink to an outside namespace, and a manager on that host."""

    prefix: str
    host: str
    outside: str
    manager: NetworkManager

    @property
    def host_path(self) -> Path:
        return nsutil.netns_path(self.host)


@pytest.fixture
async def world(prefix: str) -> AsyncIterator[World]:
    bed = TestBed(prefix)
    bed.build()
    host, outside = bed.host, bed.outside
    manager = NetworkManager(
        naming=Naming(prefix=prefix, table="wrennd_test"), host_netns=nsutil.netns_path(host)
    )
    await manager.start()
    yield World(prefix, host, outside, manager)


async def _exchange(sock: socket.socket, address: tuple[str, int], limit: float = 5) -> bytes:
    """Connect, send b"ping", return the reply (raises TimeoutError if unreachable)."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    await asyncio.wait_for(loop.sock_connect(sock, address), limit)
    await loop.sock_sendall(sock, b"ping")
    return await asyncio.wait_for(loop.sock_recv(sock, 200), limit)


class Server:
    """A TCP server in a namespace answering each connection with its peer's address."""

    def __init__(self, netns: str, address: tuple[str, int]) -> None:
        self.sock = nsutil.socket_in(netns, socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(address)
        self.sock.listen()
        self.sock.setblocking(False)
        self.peers: list[str] = []
        self._task = asyncio.ensure_future(self._serve())

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, peer = await loop.sock_accept(self.sock)
            with conn:
                self.peers.append(peer[0])
                await loop.sock_recv(conn, 100)
                await loop.sock_sendall(conn, peer[0].encode())

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.sock.close()


@pytest.fixture
def exchange() -> Callable[..., Awaitable[bytes]]:
    """``await exchange(sock, (ip, port))``: connect, send, return the reply."""
    return _exchange


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[str, tuple[str, int]], Server]]:
    """``serve(netns, (ip, port))`` starts a Server; all are closed at teardown."""
    servers: list[Server] = []

    def start(netns: str, address: tuple[str, int]) -> Server:
        servers.append(Server(netns, address))
        return servers[-1]

    yield start
    for server in servers:
        await server.close()
