"""A full filesystem: create and flatten fail with NoSpace and leave nothing behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from wrennd.storage import CopyBackend, NoSpace, SandboxStorageNotFound
from wrennd.storage.fileops import copy_device_sparse
from wrennd.storage.loopdev import attach, detach

pytestmark = pytest.mark.root

MiB = 1 << 20


def leftovers(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name != "lost+found" and p.is_file())


@pytest.fixture
def tiny(make_fs: Any) -> Path:
    """An 8 MiB ext4 (about 6 MiB free) with state_dir on it."""
    state = make_fs("ext4", 8) / "state"
    (state / "images").mkdir(parents=True)
    return state


def test_create_on_a_full_filesystem(tiny: Path, tools: Any) -> None:
    base = tiny / "images" / "base.ext4"
    free = tools.fs_free(tiny)
    # Dense base of ~60% of the free space: one copy cannot fit beside it.
    size = (free * 6 // 10) // 4096 * 4096
    tools.sparse_file(base, size, [(0, size)], seed=3)
    files_before = leftovers(tiny)
    free_before = tools.fs_free(tiny)
    backend = CopyBackend(tiny)
    with pytest.raises(NoSpace) as err:
        backend.create("full1", base)
    assert "create rootfs of sandbox full1" in str(err.value)
    assert "nothing was kept" in str(err.value)
    assert isinstance(err.value.__cause__, OSError)
    assert not backend.sandbox_dir("full1").exists()
    assert leftovers(tiny) == files_before
    assert tools.fs_free(tiny) >= free_before - 64 * 1024
    with pytest.raises(SandboxStorageNotFound):
        backend.record("full1")


def test_flatten_on_a_full_filesystem(tiny: Path, tools: Any) -> None:
    base = tiny / "images" / "base.ext4"
    tools.sparse_file(base, 16 * MiB, [(0, 256 * 1024)], seed=4)
    backend = CopyBackend(tiny)
    rec = backend.create("full2", base)
    # The sandbox writes more than half of what is free: its flattened copy cannot fit.
    amount = (tools.fs_free(tiny) * 6 // 10) // 4096 * 4096
    with rec.layer.open("r+b") as f:
        f.seek(MiB)
        f.write(tools.pattern(amount, 5))
    layer_bytes = rec.layer.read_bytes()
    files_before = leftovers(tiny)
    free_before = tools.fs_free(tiny)
    dest = tiny / "images" / "template.ext4"
    with pytest.raises(NoSpace) as err:
        backend.flatten("full2", dest)
    assert str(dest) in str(err.value) and "flatten sandbox full2" in str(err.value)
    assert not dest.exists()
    assert leftovers(tiny) == files_before
    assert tools.fs_free(tiny) >= free_before - 64 * 1024
    # The sandbox itself is untouched and still usable.
    assert rec.layer.read_bytes() == layer_bytes
    backend.remove("full2")


def test_device_copy_hits_enospc_as_oserror(tiny: Path, tools: Any, tmp_path: Path) -> None:
    """The devicemapper flatten path (copy from a block device) on a full filesystem."""
    src = tmp_path / "dev.img"
    size = 12 * MiB
    tools.sparse_file(src, size, [(0, size)], seed=6)
    device = attach(src, read_only=True)
    try:
        fd_src = os.open(device.path, os.O_RDONLY)
        fd_dst = os.open(tiny / "out", os.O_RDWR | os.O_CREAT | os.O_EXCL)
        try:
            with pytest.raises(OSError) as err:
                copy_device_sparse(fd_src, fd_dst, size)
            assert err.value.errno == 28  # ENOSPC
        finally:
            os.close(fd_dst)
            os.close(fd_src)
    finally:
        detach(device)
