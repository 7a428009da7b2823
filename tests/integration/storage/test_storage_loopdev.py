"""Loop devices through LOOP_CTL_GET_FREE + LOOP_CONFIGURE, for real; always detached."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wrennd.storage import DeviceError, fileops, loopdev

pytestmark = pytest.mark.root


@pytest.fixture
def attached() -> Iterator[list[loopdev.LoopDevice]]:
    devices: list[loopdev.LoopDevice] = []
    yield devices
    for d in devices:
        loopdev.detach(d)


def test_read_only_attach(tmp_path: Path, tools: Any, attached: list[Any]) -> None:
    f = tmp_path / "ro.img"
    content = tools.sparse_file(f, 1 << 20, [(4096, 8192)], seed=1)
    dev = loopdev.attach(f, read_only=True)
    attached.append(dev)
    [b] = [b for b in loopdev.bound() if b.device == dev]
    assert b.backing_file == str(f.resolve()) and b.read_only
    assert loopdev.find_backed_by(f) == [dev]
    assert dev.path.read_bytes() == content
    # Depending on the kernel the open or the write is refused.
    with pytest.raises(OSError) as err:
        fd = os.open(dev.path, os.O_WRONLY)
        try:
            os.pwrite(fd, bytes(4096), 0)
        finally:
            os.close(fd)
    assert err.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    assert f.read_bytes() == content


def test_read_write_attach_reaches_the_file(tmp_path: Path, attached: list[Any]) -> None:
    f = tmp_path / "rw.img"
    f.write_bytes(bytes(1 << 20))
    dev = loopdev.attach(f, read_only=False)
    attached.append(dev)
    assert not next(b for b in loopdev.bound() if b.device == dev).read_only
    fd = os.open(dev.path, os.O_WRONLY | os.O_SYNC)
    try:
        os.pwrite(fd, b"through the loop".ljust(512, b"."), 8192)
    finally:
        os.close(fd)
    assert f.read_bytes()[8192:8208] == b"through the loop"


def test_detach_unbinds_and_is_idempotent(tmp_path: Path) -> None:
    f = tmp_path / "d.img"
    f.write_bytes(bytes(4096))
    dev = loopdev.attach(f, read_only=True)
    loopdev.detach(dev)
    assert loopdev.find_backed_by(f) == []
    loopdev.detach(dev)  # already unbound: fine


def test_concurrent_attaches_get_distinct_devices(tmp_path: Path, attached: list[Any]) -> None:
    files = []
    for i in range(8):
        f = tmp_path / f"c{i}.img"
        f.write_bytes(bytes([i]) * 4096)
        files.append(f)
    results: dict[int, loopdev.LoopDevice] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(files))

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = loopdev.attach(files[i], read_only=True)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(files))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    attached.extend(results.values())
    assert not errors
    assert len({d.number for d in results.values()}) == len(files)
    for i, d in results.items():
        assert d.path.read_bytes()[:1] == bytes([i])


def test_missing_backing_file(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match=r"nothere\.img"):
        loopdev.attach(tmp_path / "nothere.img", read_only=True)


def test_device_copy_of_a_real_ext4(tmp_path: Path, tools: Any, attached: list[Any]) -> None:
    """What devicemapper's flatten does with the dm device, here with a loop device."""
    image = tmp_path / "fs.ext4"
    tools.ext4_image(image, 32, {"a/b.bin": tools.pattern(700_000, 3), "c.txt": b"hello\n"})
    dev = loopdev.attach(image, read_only=True)
    attached.append(dev)
    out = tmp_path / "flat.ext4"
    src = os.open(dev.path, os.O_RDONLY)
    dst = os.open(out, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    try:
        fileops.copy_device_sparse(src, dst, image.stat().st_size)
    finally:
        os.close(src)
        os.close(dst)
    assert out.read_bytes() == image.read_bytes()
    assert fileops.allocated_bytes(out) < image.stat().st_size // 4  # free space stayed holes
    tools.run("e2fsck", "-fn", out)
    assert tools.run("debugfs", "-R", "cat /c.txt", out) == "hello\n"
