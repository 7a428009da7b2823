"""Sandbox networks on a namespace playing the host, with guests behind real TAPs."""

from __future__ import annotations

import asyncio
import socket

import pytest

from wrennd.network import nsutil
from wrennd.network.errors import NetworkError
from wrennd.network.manager import NetworkManager
from wrennd.network.plan import Naming
from wrennd_sim.guest_standin import GuestStandIn

pytestmark = [pytest.mark.netns]

PORT = 8080


async def test_host_reaches_guest_at_host_address(world, serve, exchange) -> None:
    net = await world.manager.create(1)
    assert str(net.host_address) == "10.11.0.1"
    async with await GuestStandIn.start(net.netns, world.manager.naming.guest_netns(1)) as g:
        serve(g.guest_netns, ("0.0.0.0", PORT))
        with nsutil.socket_in(world.host, socket.AF_INET, socket.SOCK_STREAM) as client:
            reply = await exchange(client, (str(net.host_address), PORT))
    # The guest sees the host's veth address: no NAT on the way in but the DNAT.
    assert reply == b"10.12.0.5"


async def test_guest_outbound_arrives_masqueraded(world, serve, exchange) -> None:
    net = await world.manager.create(2)
    server = serve(world.outside, ("198.18.0.2", PORT))
    async with await GuestStandIn.start(net.netns, world.manager.naming.guest_netns(2)) as g:
        with nsutil.socket_in(g.guest_netns, socket.AF_INET, socket.SOCK_STREAM) as client:
            reply = await exchange(client, ("198.18.0.2", PORT))
    assert reply == b"198.18.0.1"  # the host's uplink address
    assert server.peers == ["198.18.0.1"]


async def _unreachable(exchange, netns: str, address: tuple[str, int]) -> None:
    with (
        nsutil.socket_in(netns, socket.AF_INET, socket.SOCK_STREAM) as client,
        pytest.raises((TimeoutError, OSError)),
    ):
        await exchange(client, address, limit=0.5)


async def test_sandboxes_cannot_reach_each_other(world, serve, exchange) -> None:
    a, b = await world.manager.create(3), await world.manager.create(4)
    naming = world.manager.naming
    async with (
        await GuestStandIn.start(a.netns, naming.guest_netns(3)) as ga,
        await GuestStandIn.start(b.netns, naming.guest_netns(4)) as gb,
    ):
        serve(gb.guest_netns, ("0.0.0.0", PORT))
        # B's guest is up and reachable from the host ...
        with nsutil.socket_in(world.host, socket.AF_INET, socket.SOCK_STREAM) as client:
            assert await exchange(client, (str(b.host_address), PORT))
        # ... but not from A's guest, by any of B's addresses.
        plan = world.manager.plan.for_slot(4)
        for target in (b.host_address, plan.veth_sandbox.ip, plan.veth_host.ip):
            await _unreachable(exchange, ga.guest_netns, (str(target), PORT))
        # A's guest can still get out, so the drops are the isolation rules.
        serve(world.outside, ("198.18.0.2", PORT))
        with nsutil.socket_in(ga.guest_netns, socket.AF_INET, socket.SOCK_STREAM) as client:
            assert await exchange(client, ("198.18.0.2", PORT)) == b"198.18.0.1"


def _sysctls(keys: list[str]) -> list[str]:
    return [nsutil.read_sysctl(k) for k in keys]


async def test_forwarding_on_and_ipv6_off_where_needed(world) -> None:
    net = await world.manager.create(5)
    host = nsutil.run_in_thread(
        lambda: _sysctls(
            [
                "net/ipv4/conf/up0/forwarding",
                f"net/ipv4/conf/{net.host_veth}/forwarding",
                f"net/ipv6/conf/{net.host_veth}/disable_ipv6",
                "net/ipv4/conf/all/forwarding",  # the host-wide switch is left alone
            ]
        ),
        netns=world.host_path,
    )
    assert host == ["1", "1", "1", "0"]
    sandbox = nsutil.run_in_thread(
        lambda: _sysctls(
            [
                "net/ipv4/ip_forward",
                "net/ipv6/conf/tap0/disable_ipv6",
                "net/ipv6/conf/eth0/disable_ipv6",
            ]
        ),
        netns=net.netns_path,
    )
    assert sandbox == ["1", "1", "1"]


async def test_concurrent_creates_and_removes(world, serve, exchange) -> None:
    slots = range(1, 11)
    nets = await asyncio.gather(*(world.manager.create(s) for s in slots))
    assert [str(n.host_address) for n in nets] == [f"10.11.0.{s}" for s in slots]
    # Every one of them works.
    async with await GuestStandIn.start(nets[6].netns, world.manager.naming.guest_netns(7)) as g:
        serve(g.guest_netns, ("0.0.0.0", PORT))
        with nsutil.socket_in(world.host, socket.AF_INET, socket.SOCK_STREAM) as client:
            assert await exchange(client, (str(nets[6].host_address), PORT))
    await asyncio.gather(*(world.manager.remove(s) for s in slots))
    report = await world.manager.cleanup_stale(set())
    assert (report.namespaces, report.links, report.elements) == ([], [], [])


async def test_start_without_default_route_is_a_clear_error(prefix: str) -> None:
    bare = f"{prefix}bare"
    nsutil.run_in_thread(lambda: nsutil.create_and_enter(bare))
    manager = NetworkManager(naming=Naming(prefix=prefix), host_netns=nsutil.netns_path(bare))
    with pytest.raises(NetworkError, match="no IPv4 default route"):
        await manager.start()
    with pytest.raises(NetworkError, match="start"):
        await manager.create(1)
    named = NetworkManager(host_netns=nsutil.netns_path(bare), uplink="nope0")
    with pytest.raises(NetworkError, match="nope0"):
        await named.start()
