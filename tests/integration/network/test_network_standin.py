"""The guest stand-in against a hand-made sandbox namespace with a real tap0."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from pathlib import Path

import pytest

from wrennd.network import links, nsutil, tap
from wrennd_sim.guest_standin import GuestStandIn

pytestmark = [pytest.mark.netns]


def _sandbox_ns(name: str) -> None:
    nsutil.create_and_enter(name)
    tap.create_persistent_tap("tap0")
    with links.iproute() as ipr:
        links.mark_and_up(ipr, "lo")
        index = links.mark_and_up(ipr, "tap0")
        ipr.addr("add", index=index, address="169.254.0.22", prefixlen=30)


async def _echo_once(server: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    conn, _ = await loop.sock_accept(server)
    with conn:
        data = await loop.sock_recv(conn, 100)
        await loop.sock_sendall(conn, data.upper())


def _fds() -> list[str]:
    return sorted(p.name for p in Path("/proc/self/fd").iterdir())


async def test_guest_namespace_is_reachable_through_tap0(prefix: str) -> None:
    sandbox = f"{prefix}sb"
    await nsutil.run_async(lambda: _sandbox_ns(sandbox))
    fds = _fds()
    async with await GuestStandIn.start(sandbox, f"{prefix}g") as standin:
        assert standin.guest_netns_path.exists()
        server = nsutil.socket_in(standin.guest_netns, socket.AF_INET, socket.SOCK_STREAM)
        client = nsutil.socket_in(sandbox, socket.AF_INET, socket.SOCK_STREAM)
        with server, client:
            server.bind(("169.254.0.21", 8080))
            server.listen()
            server.setblocking(False)
            client.setblocking(False)
            served = asyncio.ensure_future(_echo_once(server))
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(client, ("169.254.0.21", 8080)), 5)
            await loop.sock_sendall(client, b"hello")
            assert await asyncio.wait_for(loop.sock_recv(client, 100), 5) == b"HELLO"
            await served
        assert standin.stats.to_guest.frames > 0
        assert standin.stats.from_guest.frames > 0

        def guest_routes() -> list[str]:
            with links.iproute() as ipr:
                return [str(r.get_attr("RTA_GATEWAY")) for r in ipr.get_default_routes()]

        gw = await nsutil.run_async(guest_routes, netns=standin.guest_netns_path)
        assert gw == [str(ipaddress.IPv4Address("169.254.0.22"))]
    assert not standin.running
    assert not nsutil.exists(f"{prefix}g")
    assert _fds() == fds


async def test_missing_sandbox_tap_is_an_error_and_leaves_nothing(prefix: str) -> None:
    sandbox = f"{prefix}sb"
    await nsutil.run_async(lambda: nsutil.create_and_enter(sandbox))
    with pytest.raises(FileNotFoundError, match="tap0"):
        await GuestStandIn.start(sandbox, f"{prefix}g")
    assert not nsutil.exists(f"{prefix}g")

    def links_in_sandbox() -> list[str]:
        with links.iproute() as ipr:
            return sorted(links.link_names(ipr))

    assert await nsutil.run_async(links_in_sandbox, netns=nsutil.netns_path(sandbox)) == ["lo"]


async def test_taken_guest_namespace_is_refused_not_reused(prefix: str) -> None:
    sandbox = f"{prefix}sb"
    await nsutil.run_async(lambda: _sandbox_ns(sandbox))
    await nsutil.run_async(lambda: nsutil.create_and_enter(f"{prefix}g"))
    with pytest.raises(FileExistsError):
        await GuestStandIn.start(sandbox, f"{prefix}g")
    assert nsutil.exists(f"{prefix}g")  # someone else's: left alone
