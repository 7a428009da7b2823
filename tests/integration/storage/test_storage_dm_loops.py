"""The devicemapper backend on real loop devices, with dmsetup replaced by a model.

This host has no device-mapper, so the dm step is the one thing simulated:
``DmsetupModel`` answers dmsetup's command lines and checks each table it is
given against the kernel's view of the loop devices it names (bound,
read-only origin, writable CoW, sizes).  Everything else (loop ioctls,
reference counts, ordering, rollback, stale selection) runs for real.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from wrennd.storage import BaseImageInUse, DeviceError, DeviceMapperBackend, NoSpace, loopdev
from wrennd.storage.baseloops import KernelLoops
from wrennd.storage.dmsetup import DmNotFound, DmSetup, cow_file_size
from wrennd.storage.loopdev import LoopDevice

pytestmark = pytest.mark.root

MiB = 1 << 20


def sysfs(devno: str, attr: str) -> str:
    return Path(f"/sys/dev/block/{devno}/{attr}").read_text().strip()


class DmsetupModel:
    """dmsetup's command lines over an in-memory table set, validated against real loops."""

    def __init__(self, events: list[tuple[str, ...]]) -> None:
        self.events = events
        self.tables: dict[str, str] = {}
        self.holders: dict[str, int] = {}
        self.fail_create = False

    def __call__(self, argv: Sequence[str]) -> str:
        cmd, name = argv[0], argv[-1]
        if cmd == "targets":
            return "snapshot-merge   v1.5.0\nsnapshot         v1.16.0\nlinear           v1.4.0\n"
        if cmd == "table":
            return "".join(f"{n}: {t}\n" for n, t in sorted(self.tables.items()))
        if cmd == "create":
            assert argv[2] == "--table"
            self.events.append(("dm-create", argv[1]))
            if self.fail_create:
                raise DeviceError("dmsetup create: device-mapper: reload ioctl failed")
            self._check_table(argv[3])
            self.tables[argv[1]] = argv[3]
            return ""
        if name not in self.tables:
            raise DmNotFound(f"dmsetup {cmd} {name}: No such device or address")
        if cmd == "info":
            assert list(argv[1:5]) == ["--columns", "--noheadings", "-o", "open"]
            return f"{self.holders.get(name, 0)}\n"
        if cmd == "remove":
            assert "--retry" in argv
            self.events.append(("dm-remove", name))
            del self.tables[name]
            return ""
        raise AssertionError(f"unexpected dmsetup command {argv}")

    @staticmethod
    def _check_table(table: str) -> None:
        start, length, target, origin, cow, persistent, chunk = table.split()
        assert (start, target, persistent, chunk) == ("0", "snapshot", "P", "8")
        assert sysfs(origin, "ro") == "1", "origin loop must be read-only"
        assert sysfs(cow, "ro") == "0", "CoW loop must be writable"
        assert int(sysfs(origin, "size")) == int(length), "table must cover the whole origin"
        assert int(sysfs(cow, "size")) * 512 >= cow_file_size(int(length) * 512, 8)
        assert Path(f"/sys/dev/block/{origin}/loop/backing_file").exists()


class RecordingLoops(KernelLoops):
    def __init__(self, events: list[tuple[str, ...]]) -> None:
        self.events = events

    def attach(self, path: Path, read_only: bool) -> LoopDevice:
        device = super().attach(path, read_only)
        self.events.append(("loop-attach", path.name, "ro" if read_only else "rw"))
        return device

    def detach(self, device: LoopDevice) -> None:
        backing = [b.backing_file for b in loopdev.bound() if b.device == device]
        super().detach(device)
        self.events.append(("loop-detach", Path(backing[0]).name if backing else "?"))


class Rig:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.events: list[tuple[str, ...]] = []
        self.model = DmsetupModel(self.events)
        self.backend = self.new_backend()

    def new_backend(self) -> DeviceMapperBackend:
        return DeviceMapperBackend(
            self.state, dm=DmSetup(self.model), loops=RecordingLoops(self.events)
        )

    def state_loops(self) -> list[loopdev.BoundLoop]:
        root = str(self.state.resolve())
        return [b for b in loopdev.bound() if b.backing_file.startswith(root)]


@pytest.fixture
def rig(tmp_path: Path, tools: Any) -> Iterator[Rig]:
    state = tmp_path / "state"
    (state / "images").mkdir(parents=True)
    for name in ("base.ext4", "other.ext4"):
        tools.sparse_file(state / "images" / name, 8 * MiB, [(0, MiB)], seed=len(name))
    r = Rig(state)
    yield r
    for b in r.state_loops():  # never leak a loop device, whatever the test did
        loopdev.detach(b.device)


def test_create_and_teardown_order(rig: Rig) -> None:
    base = rig.state / "images" / "base.ext4"
    rec = rig.backend.create("a", base)
    assert rec.drive == Path("/dev/mapper/wrenn-a") and rec.layer.name == "rootfs.cow"
    assert rig.events == [
        ("loop-attach", "base.ext4", "ro"),
        ("loop-attach", "rootfs.cow", "rw"),
        ("dm-create", "wrenn-a"),
    ]
    assert rec.layer.stat().st_size == cow_file_size(8 * MiB, 8)
    assert rec.layer.stat().st_blocks == 0, "the CoW file must start sparse"
    rig.events.clear()
    rig.backend.remove("a")
    assert rig.events == [
        ("dm-remove", "wrenn-a"),
        ("loop-detach", "rootfs.cow"),
        ("loop-detach", "base.ext4"),
    ]
    assert rig.state_loops() == [] and not rec.layer.exists()


def test_shared_base_is_detached_by_its_last_user(rig: Rig) -> None:
    base = rig.state / "images" / "base.ext4"
    rig.backend.create("a", base)
    rig.backend.create("b", base)
    assert [e for e in rig.events if e[1] == "base.ext4"] == [("loop-attach", "base.ext4", "ro")]
    assert rig.backend.bases.refs(base) == 2
    origins = {t.split()[3] for t in rig.model.tables.values()}
    assert len(origins) == 1
    rig.backend.remove("a")
    assert len(loopdev.find_backed_by(base)) == 1
    rig.backend.remove("b")
    assert loopdev.find_backed_by(base) == [] and rig.backend.bases.refs(base) == 0


def test_concurrent_creates_share_one_base_loop(rig: Rig) -> None:
    base = rig.state / "images" / "base.ext4"
    ids = [f"c{i}" for i in range(8)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(ids))

    def run(fn: Any, sid: str, *args: Any) -> None:
        barrier.wait()
        try:
            fn(sid, *args)
        except BaseException as e:
            errors.append(e)

    def all_threads(fn: Any, *args: Any) -> None:
        threads = [threading.Thread(target=run, args=(fn, sid, *args)) for sid in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors

    all_threads(rig.backend.create, base)
    assert rig.events.count(("loop-attach", "base.ext4", "ro")) == 1
    assert len(loopdev.find_backed_by(base)) == 1
    assert rig.backend.bases.refs(base) == len(ids)
    tables = [t.split() for t in rig.model.tables.values()]
    assert len({t[3] for t in tables}) == 1 and len({t[4] for t in tables}) == len(ids)
    barrier.reset()
    all_threads(rig.backend.remove)
    assert rig.events.count(("loop-detach", "base.ext4")) == 1
    assert rig.state_loops() == [] and rig.model.tables == {}


def test_failed_dm_create_rolls_everything_back(rig: Rig) -> None:
    base = rig.state / "images" / "base.ext4"
    rig.model.fail_create = True
    with pytest.raises(DeviceError, match="reload ioctl failed"):
        rig.backend.create("f", base)
    assert rig.events[-2:] == [("loop-detach", "rootfs.cow"), ("loop-detach", "base.ext4")]
    assert rig.state_loops() == []
    assert not rig.backend.sandbox_dir("f").exists()
    assert rig.backend.bases.refs(base) == 0


def test_teardown_waits_for_the_vmm(rig: Rig) -> None:
    rec = rig.backend.create("h", rig.state / "images" / "base.ext4")
    rig.model.holders["wrenn-h"] = 1  # firecracker still has the drive open
    with pytest.raises(DeviceError, match="still open"):
        rig.backend.detach("h")
    assert "wrenn-h" in rig.model.tables and len(rig.state_loops()) == 2
    assert rig.backend.record("h").attached
    rig.model.holders["wrenn-h"] = 0
    rig.backend.detach("h")
    assert rig.state_loops() == [] and rec.layer.exists()


def test_pause_keeps_the_cow_file_and_resume_reuses_it(rig: Rig) -> None:
    base = rig.state / "images" / "base.ext4"
    rec = rig.backend.create("p", base)
    with rec.layer.open("r+b") as f:  # stands in for exceptions the kernel wrote
        f.write(b"exceptions")
    rig.backend.detach("p")
    assert rig.model.tables == {} and rig.state_loops() == []
    with pytest.raises(BaseImageInUse, match="p"):
        rig.backend.delete_base(base)
    rig.events.clear()
    again = rig.backend.attach("p")
    assert again.attached and again.drive == rec.drive
    assert rig.events == [
        ("loop-attach", "base.ext4", "ro"),
        ("loop-attach", "rootfs.cow", "rw"),
        ("dm-create", "wrenn-p"),
    ]
    assert rec.layer.read_bytes()[:10] == b"exceptions"
    rig.backend.remove("p")


def test_cleanup_stale_after_a_crash(rig: Rig, tmp_path: Path, tools: Any) -> None:
    base, other = rig.state / "images" / "base.ext4", rig.state / "images" / "other.ext4"
    rig.backend.create("live", base)
    rig.backend.create("dead1", base)
    rig.backend.create("dead2", other)
    stray = rig.state / "images" / "stray.img"  # a loop nobody's table uses
    tools.sparse_file(stray, MiB, [], seed=0)
    loopdev.attach(stray, read_only=True)
    outside = tmp_path / "outside.img"  # not ours: must survive
    tools.sparse_file(outside, MiB, [], seed=0)
    foreign = loopdev.attach(outside, read_only=True)
    try:
        fresh = rig.new_backend()  # the daemon restarted; nothing in memory
        report = fresh.cleanup_stale(["live"])
        assert sorted(report.dm_devices) == ["wrenn-dead1", "wrenn-dead2"]
        assert sorted(report.marked_detached) == ["dead1", "dead2"]
        assert list(rig.model.tables) == ["wrenn-live"]
        names = sorted(
            Path(b.backing_file).parent.name + "/" + Path(b.backing_file).name
            for b in rig.state_loops()
        )
        assert names == ["images/base.ext4", "live/rootfs.cow"]
        assert loopdev.find_backed_by(outside) == [foreign]
        assert fresh.bases.refs(base) == 1
        assert not fresh.record("dead1").attached and fresh.record("live").attached
        fresh.remove("live")  # the adopted reference was the last one
        assert rig.state_loops() == []
        fresh.attach("dead1")
        fresh.remove("dead1")
        fresh.remove("dead2")
        assert rig.state_loops() == [] and rig.model.tables == {}
    finally:
        loopdev.detach(foreign)


def test_cow_file_is_sized_for_the_whole_origin(rig: Rig) -> None:
    rec = rig.backend.create("s", rig.state / "images" / "base.ext4")
    assert rec.layer.stat().st_size > rec.base_size
    assert rec.layer.stat().st_blocks == 0
    rig.backend.remove("s")


def test_disk_full_after_the_devices_are_up_rolls_back(make_fs: Any, tools: Any) -> None:
    state = make_fs("ext4", 8) / "state"
    (state / "images").mkdir(parents=True)
    base = state / "images" / "base.ext4"
    tools.sparse_file(base, 4 * MiB, [(0, 64 * 1024)], seed=1)
    rig = Rig(state)
    sdir = rig.backend.sandbox_dir("full")
    sdir.mkdir()  # made by the sandbox manager before the disk filled up
    fd = os.open(state / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for piece in (65536, 4096):  # fill every free block, the reserved ones too (root)
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\xff" * piece)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        with pytest.raises(NoSpace, match="create rootfs of sandbox full"):
            rig.backend.create("full", base)
        # The CoW file is sparse, so the devices came up; the record could not be written.
        assert rig.events == [
            ("loop-attach", "base.ext4", "ro"),
            ("loop-attach", "rootfs.cow", "rw"),
            ("dm-create", "wrenn-full"),
            ("dm-remove", "wrenn-full"),
            ("loop-detach", "rootfs.cow"),
            ("loop-detach", "base.ext4"),
        ]
        assert rig.state_loops() == [] and rig.model.tables == {}
        assert sdir.is_dir() and list(sdir.iterdir()) == []
    finally:
        for b in rig.state_loops():
            loopdev.detach(b.device)
