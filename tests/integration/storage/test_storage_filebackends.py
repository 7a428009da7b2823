"""reflink on real btrfs and xfs, copy on ext4/btrfs/xfs, in loop-file filesystems."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from wrennd.storage import (
    BaseImageInUse,
    BaseImageMissing,
    CopyBackend,
    FlattenTargetExists,
    ReflinkBackend,
    SandboxStorageExists,
    StorageBackend,
    WrongAttachState,
)
from wrennd.storage.fileops import allocated_bytes, data_extents

pytestmark = pytest.mark.root

MiB = 1 << 20
CASES = [
    (ReflinkBackend, "btrfs"),
    (ReflinkBackend, "xfs"),
    (CopyBackend, "ext4"),
    (CopyBackend, "btrfs"),
    (CopyBackend, "xfs"),
]
IDS = [f"{b.name}-{fs}" for b, fs in CASES]

# A sparse base: data at the start, in the middle and at the very end.
BASE_SIZE = 24 * MiB
BASE_RUNS = [(0, 2 * MiB), (10 * MiB, 3 * MiB + 4096), (BASE_SIZE - 64 * 1024, 64 * 1024)]


class Setup(NamedTuple):
    backend: StorageBackend
    base: Path
    content: bytes
    fstype: str


@pytest.fixture(params=CASES, ids=IDS)
def setup(request: pytest.FixtureRequest, make_fs: Any, tools: Any) -> Setup:
    backend_cls, fstype = request.param
    mnt = make_fs(fstype, 64)
    state = mnt / "state"
    (state / "images").mkdir(parents=True)
    base = state / "images" / "base.ext4"
    content = tools.sparse_file(base, BASE_SIZE, BASE_RUNS, seed=7)
    return Setup(backend_cls(state), base, content, fstype)


def test_create_gives_an_independent_copy_of_the_base(setup: Setup, tools: Any) -> None:
    backend, base, content, fstype = setup
    used_before = tools.fs_used(backend.state_dir)
    rec = backend.create("sb1", base)
    assert rec.attached and rec.drive == rec.layer == backend.sandbox_dir("sb1") / "rootfs.ext4"
    assert rec.base_image == base.resolve() and rec.base_size == BASE_SIZE
    assert rec.layer.read_bytes() == content
    grown = tools.fs_used(backend.state_dir) - used_before
    data = sum(n for _, n in BASE_RUNS)
    # copy_file_range shares extents itself where the filesystem can (btrfs, xfs).
    if backend.name == "reflink" or fstype in ("btrfs", "xfs"):
        assert grown < data // 4, f"the clone should share extents, fs grew {grown}"
    else:
        assert grown >= data, f"a copy should own its data, fs grew only {grown}"
    # Holes stay holes: the clone allocates about what the base does, not its size.
    assert allocated_bytes(rec.layer) < 2 * allocated_bytes(base)

    fd = os.open(rec.layer, os.O_RDONLY)
    try:
        extents = data_extents(fd, BASE_SIZE)
    finally:
        os.close(fd)
    assert sum(n for _, n in extents) < BASE_SIZE // 2

    with rec.layer.open("r+b") as f:
        f.seek(5 * MiB)
        f.write(b"sandbox write")
    assert base.read_bytes() == content, "a sandbox write reached the base image"
    assert backend.record("sb1") == rec
    with pytest.raises(SandboxStorageExists):
        backend.create("sb1", base)


def test_writes_survive_detach_and_attach(setup: Setup) -> None:
    backend, base, _, _ = setup
    rec = backend.create("sb2", base)
    with rec.layer.open("r+b") as f:
        f.seek(1234)
        f.write(b"kept across pause")
    assert not backend.detach("sb2").attached
    with pytest.raises(WrongAttachState):
        backend.detach("sb2")
    rec2 = backend.attach("sb2")
    assert rec2.attached and rec2.drive == rec.drive
    with rec2.drive.open("rb") as f:
        f.seek(1234)
        assert f.read(17) == b"kept across pause"
    with pytest.raises(WrongAttachState):
        backend.attach("sb2")


def test_flatten_is_base_plus_writes_byte_for_byte(setup: Setup, tools: Any) -> None:
    backend, base, content, _ = setup
    rec = backend.create("sb3", base)
    expected = bytearray(content)
    writes = [(4096, 8192), (3 * MiB + 100, 5000), (BASE_SIZE - 4096, 4096), (20 * MiB, MiB)]
    with rec.layer.open("r+b") as f:
        for offset, length in writes:
            data = tools.pattern(length, offset)
            f.seek(offset)
            f.write(data)
            expected[offset : offset + length] = data
    backend.detach("sb3")  # the template case: flatten a paused sandbox
    dest = backend.state_dir / "images" / "flat.ext4"
    assert backend.flatten("sb3", dest) == dest
    assert dest.read_bytes() == bytes(expected)
    assert base.read_bytes() == content
    assert not [p for p in dest.parent.iterdir() if ".tmp-" in p.name]
    with pytest.raises(FlattenTargetExists):
        backend.flatten("sb3", dest)
    # The flattened image is independent of the sandbox.
    backend.remove("sb3")
    assert dest.read_bytes() == bytes(expected)


def test_remove_and_base_in_use(setup: Setup) -> None:
    backend, base, _, _ = setup
    rec = backend.create("sb4", base)
    backend.create("sb5", base)
    with pytest.raises(BaseImageInUse) as err:
        backend.delete_base(base)
    assert err.value.sandbox_ids == ["sb4", "sb5"] and "sb4, sb5" in str(err.value)
    backend.remove("sb4")
    assert not rec.layer.exists() and not (rec.layer.parent / "rootfs.json").exists()
    backend.remove("sb5")
    backend.delete_base(base)
    assert not base.exists()
    with pytest.raises(BaseImageMissing):
        backend.create("sb6", base)
    assert not backend.sandbox_dir("sb6").exists()


def test_flatten_of_a_real_ext4_passes_fsck(setup: Setup, tools: Any, tmp_path: Path) -> None:
    backend, _, _, _ = setup
    files = {"etc/hostname": b"base\n", "bin/tool": tools.pattern(300_000, 1)}
    base = backend.state_dir / "images" / "rootfs.ext4"
    tools.ext4_image(base, 32, files)
    base_bytes = base.read_bytes()
    rec = backend.create("fs1", base)
    written = tools.pattern(2 * MiB + 17, 2)
    with tools.mounted(rec.drive, tmp_path / "guest") as root:
        (root / "home").mkdir()
        (root / "home" / "data.bin").write_bytes(written)
        (root / "etc" / "hostname").write_bytes(b"sandbox\n")
    sandbox_bytes = rec.layer.read_bytes()
    dest = backend.state_dir / "images" / "template.ext4"
    backend.flatten("fs1", dest)
    assert dest.read_bytes() == sandbox_bytes
    assert base.read_bytes() == base_bytes
    tools.run("e2fsck", "-fn", dest)
    assert tools.run_bytes("debugfs", "-R", "cat /home/data.bin", dest) == written
    assert tools.run("debugfs", "-R", "cat /etc/hostname", dest) == "sandbox\n"
    assert tools.run("debugfs", "-R", "cat /etc/hostname", base) == "base\n"
