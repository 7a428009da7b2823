"""Stale device selection after a crash (pure function over what the kernel reports)."""

from __future__ import annotations

from pathlib import Path

from wrennd.storage.dmsetup import parse_tables
from wrennd.storage.loopdev import BoundLoop, LoopDevice
from wrennd.storage.stale import plan_stale

STATE = Path("/var/lib/wrennd")


def loop(n: int, backing: str, ro: bool = False) -> BoundLoop:
    return BoundLoop(LoopDevice(n, 7, n), backing, ro)


def test_selection() -> None:
    tables = parse_tables(
        "wrenn-live: 0 100 snapshot 7:0 7:1 P 8\n"
        "wrenn-dead: 0 100 snapshot 7:0 7:2 P 8\n"
        "wrenn-gone: 0 100 snapshot 7:3 7:4 P 8\n"
        "vg-root: 0 100 linear 8:2 0\n"
    )
    loops = [
        loop(0, "/var/lib/wrennd/images/base.ext4", ro=True),
        loop(1, "/var/lib/wrennd/sandboxes/live/rootfs.cow"),
        loop(2, "/var/lib/wrennd/sandboxes/dead/rootfs.cow"),
        loop(3, "/var/lib/wrennd/images/old.ext4 (deleted)", ro=True),
        loop(4, "/var/lib/wrennd/sandboxes/gone/rootfs.cow (deleted)"),
        loop(5, "/home/user/disk.img"),
        loop(6, "/var/lib/wrennd-other/x.img"),
    ]
    plan = plan_stale(tables, loops, {"live", "paused-no-device"}, STATE)
    assert plan.remove_dm == ["wrenn-dead", "wrenn-gone"]
    assert [d.number for d in plan.detach_loops] == [2, 3, 4]
    assert plan.base_refs == [(STATE / "images/base.ext4", LoopDevice(0, 7, 0), 1)]
    assert plan.cow_loops == {"live": LoopDevice(1, 7, 1)}


def test_a_base_shared_by_running_sandboxes_keeps_its_count() -> None:
    tables = parse_tables("wrenn-a: 0 8 snapshot 7:0 7:1 P 8\nwrenn-b: 0 8 snapshot 7:0 7:2 P 8\n")
    loops = [
        loop(0, "/var/lib/wrennd/images/base.ext4", ro=True),
        loop(1, "/var/lib/wrennd/sandboxes/a/rootfs.cow"),
        loop(2, "/var/lib/wrennd/sandboxes/b/rootfs.cow"),
    ]
    plan = plan_stale(tables, loops, {"a", "b"}, STATE)
    assert plan.remove_dm == [] and plan.detach_loops == []
    assert plan.base_refs == [(STATE / "images/base.ext4", LoopDevice(0, 7, 0), 2)]
    assert set(plan.cow_loops) == {"a", "b"}


def test_nothing_running_everything_goes() -> None:
    tables = parse_tables("wrenn-a: 0 8 snapshot 7:0 7:1 P 8\n")
    loops = [
        loop(0, "/var/lib/wrennd/images/base.ext4", ro=True),
        loop(1, "/var/lib/wrennd/sandboxes/a/rootfs.cow"),
    ]
    plan = plan_stale(tables, loops, set(), STATE)
    assert plan.remove_dm == ["wrenn-a"]
    assert [d.number for d in plan.detach_loops] == [0, 1]
    assert plan.base_refs == [] and plan.cow_loops == {}


def test_no_devices() -> None:
    plan = plan_stale({}, [], {"a"}, STATE)
    assert (plan.remove_dm, plan.detach_loops, plan.base_refs, plan.cow_loops) == ([], [], [], {})
