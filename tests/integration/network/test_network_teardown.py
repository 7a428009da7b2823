"""Removal leaves nothing; repeated cycles leak nothing; foreign names are never touched."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.polling import wait_for
from wrennd.network import links, nsutil, ruleset
from wrennd.network.errors import NameCollision, SetupError, SlotError
from wrennd.network.nft import Nft

pytestmark = [pytest.mark.netns]


def _host_state(table: str) -> dict[str, Any]:
    """Links, addresses, routes and our nftables table, as seen in the calling thread's netns."""
    with links.iproute() as ipr, Nft() as nft:
        return {
            "links": sorted(links.link_names(ipr)),
            "addrs": sorted(
                (str(a.get_attr("IFA_LABEL")), str(a.get_attr("IFA_ADDRESS")))
                for a in ipr.get_addr()
            ),
            "routes": sorted(
                (str(r.get_attr("RTA_DST")), r["dst_len"], str(r.get_attr("RTA_GATEWAY")))
                for r in ipr.get_routes(table=254)
            ),
            "nft": [
                {k: v for k, v in item[kind].items() if k != "handle"}
                for item in nft.list_table(ruleset.HOST_FAMILY, table) or []
                for kind in item
            ],
        }


def _snapshot(world: Any) -> dict[str, Any]:
    state = nsutil.run_in_thread(
        lambda: _host_state(world.manager.naming.table), netns=world.host_path
    )
    state["netns"] = sorted(n for n in nsutil.list_named() if n.startswith(world.prefix))
    return state


async def test_remove_leaves_nothing_and_is_idempotent(world) -> None:
    before = _snapshot(world)
    net = await world.manager.create(5)
    during = _snapshot(world)
    assert net.netns in during["netns"]
    assert net.host_veth in during["links"]
    assert ("10.11.0.5", 32, "10.12.0.22") in during["routes"]
    elems = {s.get("name"): s.get("elem") for s in during["nft"]}
    assert elems[ruleset.IFACES] == [net.host_veth]
    assert elems[ruleset.ADDRS] == ["10.11.0.5"]
    await world.manager.remove(5)
    assert _snapshot(world) == before
    await world.manager.remove(5)  # already gone: a no-op
    assert _snapshot(world) == before


def _fds() -> list[str]:
    return sorted(p.name for p in Path("/proc/self/fd").iterdir())


async def test_hundred_cycles_leak_nothing(world) -> None:
    await world.manager.create(1)  # warm up lazy one-time allocations (libnftables, caches)
    await world.manager.remove(1)
    before, fds, threads = _snapshot(world), _fds(), threading.active_count()
    for _ in range(100):
        await world.manager.create(1)
        await world.manager.remove(1)
    assert _snapshot(world) == before
    # Each netns call runs on its own thread, which settles the call and then ends:
    # the last one may still be finishing when the call returns.  A leak never ends.
    await wait_for(
        lambda: threading.active_count() == threads and _fds() == fds,
        what=f"back to {threads} threads and the same open fds",
    )


async def test_foreign_namespace_with_our_name_is_refused_not_deleted(world) -> None:
    name = world.manager.naming.netns(6)
    nsutil.run_in_thread(lambda: nsutil.create_and_enter(name))
    before = _snapshot(world)
    with pytest.raises(NameCollision, match="not made by wrennd"):
        await world.manager.create(6)
    assert _snapshot(world) == before
    await world.manager.remove(6)  # remove() also leaves it alone
    assert nsutil.exists(name)


def _add_foreign_link(name: str) -> None:
    # A veth pair, not a dummy: this kernel is built without CONFIG_DUMMY.
    with links.iproute() as ipr:
        ipr.link("add", ifname=name, kind="veth", peer="foreign0")


async def test_foreign_link_with_our_name_is_refused_not_deleted(world) -> None:
    name = world.manager.naming.host_veth(7)
    nsutil.run_in_thread(lambda: _add_foreign_link(name), netns=world.host_path)
    before = _snapshot(world)
    with pytest.raises(NameCollision, match="not made by wrennd"):
        await world.manager.create(7)
    await world.manager.remove(7)
    assert _snapshot(world) == before
    assert name in before["links"]


def _add_route(dst: str) -> None:
    with links.iproute() as ipr:
        ipr.route("add", dst=dst, oif=links.index_of(ipr, "up0"))


async def test_failure_half_way_rolls_back_everything(world) -> None:
    # Someone else routes slot 8's host address already: the host route step
    # fails after the namespace, tap0 and veth exist; all of it must go.
    nsutil.run_in_thread(lambda: _add_route("10.11.0.8/32"), netns=world.host_path)
    before = _snapshot(world)
    with pytest.raises(SetupError, match="host veth end") as err:
        await world.manager.create(8)
    assert err.value.slot == 8
    assert _snapshot(world) == before
    assert ("10.11.0.8", 32, "None") in before["routes"]  # the foreign route stays


async def test_slot_outside_the_plan_is_a_typed_error(world) -> None:
    with pytest.raises(SlotError):
        await world.manager.create(0)
    with pytest.raises(SlotError):
        await world.manager.create(world.manager.plan.capacity + 1)


@pytest.mark.parametrize("delay", [0, 0.001, 0.004])
async def test_cancelled_create_leaves_nothing(world, delay: float) -> None:
    before = _snapshot(world)
    task = asyncio.ensure_future(world.manager.create(9))
    await asyncio.sleep(delay)
    assert not task.done()  # a create takes tens of milliseconds
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _snapshot(world) == before


async def test_restart_keeps_live_elements_and_uninstall_drops_the_table(world) -> None:
    await world.manager.create(2)
    # A daemon restart rewrites the rules atomically and keeps the live sandbox's elements.
    await world.manager.start()
    state = _snapshot(world)
    elems = {s.get("name"): s.get("elem") for s in state["nft"]}
    assert elems[ruleset.ADDRS] == ["10.11.0.2"]
    assert sum(1 for s in state["nft"] if "expr" in s) == 8  # rules were not duplicated
    await world.manager.remove(2)
    await world.manager.uninstall()
    assert _snapshot(world)["nft"] == []
    await world.manager.uninstall()  # idempotent
