"""devicemapper against the real kernel: runs where /dev/mapper/control exists.

Elsewhere the ``dm`` marker skips it with the probe's reason.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wrennd.storage import DeviceMapperBackend, choose_backend, loopdev

pytestmark = [pytest.mark.root, pytest.mark.dm]

MiB = 1 << 20


@pytest.fixture
def state(tmp_path: Path, tools: Any) -> Iterator[Path]:
    state = tmp_path / "state"
    (state / "images").mkdir(parents=True)
    tools.ext4_image(state / "images" / "base.ext4", 48, {"etc/hostname": b"base\n"})
    yield state
    # Whatever a failing test left: our dm devices first, then our loops.
    owned = (
        {p.name for p in (state / "sandboxes").iterdir()}
        if (state / "sandboxes").exists()
        else set()
    )
    for sid in owned:
        subprocess.run(["dmsetup", "remove", "--retry", f"wrenn-{sid}"], capture_output=True)
    root = str(state.resolve())
    for b in loopdev.bound():
        if b.backing_file.startswith(root):
            loopdev.detach(b.device)


def sid() -> str:
    return "t" + uuid.uuid4().hex[:12]


def test_auto_picks_devicemapper(state: Path) -> None:
    assert choose_backend("auto", state).name == "devicemapper"


def test_lifecycle_on_real_device_mapper(state: Path, tools: Any, tmp_path: Path) -> None:
    backend = DeviceMapperBackend(state)
    base = state / "images" / "base.ext4"
    base_bytes = base.read_bytes()
    a = sid()
    rec = backend.create(a, base)
    assert rec.drive == Path(f"/dev/mapper/wrenn-{a}") and rec.drive.exists()
    written = tools.pattern(3 * MiB + 5, 9)
    with tools.mounted(rec.drive, tmp_path / "m1") as root:
        (root / "data.bin").write_bytes(written)
        (root / "etc" / "hostname").write_bytes(b"sandbox\n")
    backend.detach(a)
    assert not rec.drive.exists() and loopdev.find_backed_by(rec.layer) == []
    assert rec.layer.stat().st_blocks > 0, "the writes must be in the CoW file"
    again = backend.attach(a)
    with tools.mounted(again.drive, tmp_path / "m2") as root:
        assert (root / "data.bin").read_bytes() == written
    merged = again.drive.read_bytes()
    dest = state / "images" / "template.ext4"
    backend.flatten(a, dest)
    assert dest.read_bytes() == merged
    tools.run("e2fsck", "-fn", dest)
    assert tools.run_bytes("debugfs", "-R", "cat /data.bin", dest) == written
    assert tools.run("debugfs", "-R", "cat /etc/hostname", dest) == "sandbox\n"
    assert base.read_bytes() == base_bytes
    backend.detach(a)  # a paused sandbox flattens through a briefly re-made device
    dest2 = state / "images" / "template2.ext4"
    backend.flatten(a, dest2)
    assert dest2.read_bytes() == merged and not again.drive.exists()
    backend.remove(a)
    assert not again.drive.exists() and loopdev.find_backed_by(base) == []


def test_cleanup_stale_removes_devices_of_dead_sandboxes(state: Path) -> None:
    backend = DeviceMapperBackend(state)
    base = state / "images" / "base.ext4"
    live, dead = sid(), sid()
    backend.create(live, base)
    backend.create(dead, base)
    restarted = DeviceMapperBackend(state)
    report = restarted.cleanup_stale([live])
    assert report.dm_devices == [f"wrenn-{dead}"]
    assert not Path(f"/dev/mapper/wrenn-{dead}").exists()
    assert Path(f"/dev/mapper/wrenn-{live}").exists()
    assert restarted.bases.refs(base) == 1
    restarted.remove(live)
    restarted.remove(dead)
    assert loopdev.find_backed_by(base) == []
