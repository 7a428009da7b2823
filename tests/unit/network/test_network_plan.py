"""Addressing plan, names and the slot allocator: pure logic, no kernel."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wrennd import config
from wrennd.network.errors import SlotError, SlotsExhausted
from wrennd.network.manager import SandboxNetwork
from wrennd.network.plan import AddressPlan, Naming
from wrennd.network.slots import SlotAllocator

N = ipaddress.IPv4Network


def test_default_plan_matches_settings_and_design() -> None:
    s = config.load(env={})
    plan = AddressPlan(s.host_network, s.veth_network)
    assert plan == AddressPlan()
    a = plan.for_slot(1)
    assert str(a.host_address) == "10.11.0.1"
    assert str(a.veth_host) == "10.12.0.5/30"
    assert str(a.veth_sandbox) == "10.12.0.6/30"
    assert plan.capacity == 16383  # the /16 veth pool, 4 addresses a slot
    last = plan.for_slot(plan.capacity)
    assert last.veth_sandbox.network.broadcast_address == N("10.12.0.0/16").broadcast_address
    assert plan.slot_of_host_address(last.host_address) == plan.capacity


def test_slots_never_share_addresses() -> None:
    plan = AddressPlan(N("10.11.0.0/24"), N("10.12.0.0/22"))
    seen: set[ipaddress.IPv4Address] = set()
    for slot in range(1, plan.capacity + 1):
        a = plan.for_slot(slot)
        mine = {a.host_address, *a.veth_host.network}
        assert not seen & mine
        seen |= mine
    assert plan.capacity == 254  # host pool bound: /24 minus network and broadcast


@pytest.mark.parametrize("slot", [0, -1, 255, True, "1"])
def test_slot_outside_the_plan_is_refused(slot: object) -> None:
    with pytest.raises(SlotError):
        AddressPlan(N("10.11.0.0/24"), N("10.12.0.0/16")).for_slot(slot)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("host", "veth", "match"),
    [
        ("10.11.0.0/16", "10.11.128.0/20", "overlaps"),
        ("169.254.0.0/16", "10.12.0.0/16", "guest link"),
        ("10.11.0.0/31", "10.12.0.0/16", "hold no slot"),
    ],
)
def test_bad_pools_are_refused(host: str, veth: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AddressPlan(N(host), N(veth))


def test_names_round_trip_and_do_not_match_others() -> None:
    n = Naming()
    assert (n.netns(12), n.host_veth(12), n.guest_netns(12)) == ("wrn-12", "wrn-12-h", "wrn-12-g")
    assert n.slot_of_netns("wrn-12") == 12
    assert n.slot_of_host_veth("wrn-12-h") == 12
    assert n.slot_of_guest_netns("wrn-12-g") == 12
    for other in ("wrn-12-h", "wrn-0", "wrn-012", "wrn-x", "wrnx-1", "xwrn-1", "wrn-1-hh"):
        assert n.slot_of_netns(other) is None
    assert n.slot_of_host_veth("wrn-12") is None
    assert Naming(prefix="wt3a-").slot_of_netns("wrn-12") is None


def test_bad_names_are_refused() -> None:
    with pytest.raises(ValueError, match="prefix"):
        Naming(prefix="a/b")
    with pytest.raises(ValueError, match="prefix"):
        Naming(prefix="wrn1")  # "wrn1" + "2" would read as slot 12
    with pytest.raises(ValueError, match="table"):
        Naming(table="1bad")
    with pytest.raises(ValueError, match="too long"):
        Naming(prefix="averylongpfx-").check_fits(16383)
    Naming().check_fits(65534)


def test_kernel_ip_argument() -> None:
    net = SandboxNetwork(slot=1, netns="wrn-1", host_address=N("10.11.0.1/32")[0], host_veth="x")
    assert net.kernel_ip_arg == "ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off"


def test_allocator_hands_out_lowest_free_and_exhausts_with_a_typed_error() -> None:
    slots = SlotAllocator(3)
    assert [slots.allocate() for _ in range(3)] == [1, 2, 3]
    with pytest.raises(SlotsExhausted) as err:
        slots.allocate()
    assert err.value.capacity == 3
    slots.release(2)
    assert slots.allocate() == 2
    assert len(slots) == 3


def test_allocator_never_hands_out_a_live_slot_after_restart() -> None:
    live = {2, 5, 6}
    slots = SlotAllocator(8, live)
    got = [slots.allocate() for _ in range(5)]
    assert got == [1, 3, 4, 7, 8]
    assert not set(got) & live
    assert slots.in_use == frozenset(got) | live
    with pytest.raises(SlotsExhausted):
        slots.allocate()


def test_allocator_refuses_bad_input() -> None:
    with pytest.raises(SlotError, match="outside"):
        SlotAllocator(4, [5])
    with pytest.raises(SlotError, match="outside"):
        SlotAllocator(4, [0])
    with pytest.raises(SlotError, match="two sandboxes"):
        SlotAllocator(4, [1, 1])
    slots = SlotAllocator(4)
    with pytest.raises(SlotError, match="not allocated"):
        slots.release(1)
    with pytest.raises(ValueError):
        SlotAllocator(0)


@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 20)), max_size=80), st.sets(st.integers(1, 6))
)
def test_allocator_matches_a_model(ops: list[tuple[bool, int]], live: set[int]) -> None:
    slots, used = SlotAllocator(6, live), set(live)
    for allocate, pick in ops:
        if allocate:
            free = sorted(set(range(1, 7)) - used)
            if not free:
                with pytest.raises(SlotsExhausted):
                    slots.allocate()
                continue
            assert slots.allocate() == free[0]
            used.add(free[0])
        elif used:
            victim = sorted(used)[pick % len(used)]
            slots.release(victim)
            used.remove(victim)
        assert slots.in_use == used
