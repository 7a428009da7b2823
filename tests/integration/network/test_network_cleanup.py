"""Startup cleanup: stale wrennd networks go, live ones and foreign names stay."""

from __future__ import annotations

import socket

import pytest

from wrennd.network import links, nsutil, ruleset
from wrennd.network.manager import NetworkManager
from wrennd.network.nft import Nft
from wrennd_sim.guest_standin import GuestStandIn

pytestmark = [pytest.mark.netns]


def _foreign_link(name: str) -> None:
    with links.iproute() as ipr:
        ipr.link("add", ifname=name, kind="veth", peer="foreign0")


def _elements(table: str) -> dict[str, list[str]]:
    with Nft() as nft:
        items = nft.list_table(ruleset.HOST_FAMILY, table) or []
    return {i["set"]["name"]: i["set"].get("elem", []) for i in items if "set" in i}


async def test_cleanup_removes_stale_and_keeps_live_and_foreign(world, serve, exchange) -> None:
    m = world.manager
    naming = m.naming
    for slot in (1, 2, 3):
        await m.create(slot)
    # A stale guest stand-in namespace of slot 3 (its owner died without closing).
    stale_guest = await GuestStandIn.start(naming.netns(3), naming.guest_netns(3))
    # Names that look like ours but are not ours.
    nsutil.run_in_thread(lambda: nsutil.create_and_enter(naming.netns(7)))
    nsutil.run_in_thread(lambda: _foreign_link(naming.host_veth(8)), netns=world.host_path)

    # A restarted daemon: a new manager, whose records say only slot 2 lives.
    restarted = NetworkManager(m.plan, naming, host_netns=world.host_path)
    await restarted.start()
    report = await restarted.cleanup_stale({2})

    assert sorted(report.namespaces) == sorted(
        [naming.netns(1), naming.netns(3), naming.guest_netns(3)]
    )
    assert sorted(report.links) == [naming.host_veth(1), naming.host_veth(3)]
    assert sorted(report.elements) == [
        f"{ruleset.ADDRS}:10.11.0.1",
        f"{ruleset.ADDRS}:10.11.0.3",
        f"{ruleset.IFACES}:{naming.host_veth(1)}",
        f"{ruleset.IFACES}:{naming.host_veth(3)}",
    ]
    assert sorted(report.left_alone) == [naming.netns(7), naming.host_veth(8)]
    assert nsutil.exists(naming.netns(7))
    assert naming.host_veth(8) in nsutil.run_in_thread(
        lambda: links.link_names_here(), netns=world.host_path
    )
    elems = nsutil.run_in_thread(lambda: _elements(naming.table), netns=world.host_path)
    assert elems == {ruleset.IFACES: [naming.host_veth(2)], ruleset.ADDRS: ["10.11.0.2"]}
    await stale_guest.close()

    # Slot 2 still works end to end after the cleanup.
    async with await GuestStandIn.start(naming.netns(2), naming.guest_netns(2)) as g:
        serve(g.guest_netns, ("0.0.0.0", 8080))
        with nsutil.socket_in(world.host, socket.AF_INET, socket.SOCK_STREAM) as client:
            assert await exchange(client, ("10.11.0.2", 8080))
    # Cleaning again finds nothing more to do.
    again = await restarted.cleanup_stale({2})
    assert (again.namespaces, again.links, again.elements) == ([], [], [])
