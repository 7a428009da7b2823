"""Real filesystems in loop files for the storage tests, always unmounted and detached.

``make_fs("xfs", 320)`` makes a sparse file, puts a filesystem on it with
mkfs, binds it to a loop device (wrennd.storage.loopdev, the code under
test) and mounts it under the test's tmp dir.  Teardown unmounts, detaches
and deletes in that order, also when the test failed.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wrennd.storage import loopdev

MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-F", "-b", "4096"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
    "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
}
MIN_MIB = {"ext4": 8, "btrfs": 128, "xfs": 320}


def run(*argv: str | Path) -> str:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise AssertionError(f"{argv} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    return proc.stdout


def run_bytes(*argv: str | Path) -> bytes:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, check=False)
    if proc.returncode:
        raise AssertionError(f"{argv} failed ({proc.returncode}): {proc.stderr!r}")
    return proc.stdout


MakeFs = Callable[[str, int], Path]


@pytest.fixture
def make_fs(tmp_path: Path) -> Iterator[MakeFs]:
    with contextlib.ExitStack() as stack:

        def make(fstype: str, size_mib: int) -> Path:
            n = len(list(tmp_path.glob("fs*.img")))
            image = tmp_path / f"fs{n}-{fstype}.img"
            mnt = tmp_path / f"mnt{n}-{fstype}"
            mnt.mkdir()
            with image.open("wb") as f:
                f.truncate(max(size_mib, MIN_MIB[fstype]) << 20)
            stack.callback(image.unlink)
            run(*MKFS[fstype], image)
            device = loopdev.attach(image, read_only=False)
            stack.callback(loopdev.detach, device)
            run("mount", "-t", fstype, device.path, mnt)
            stack.callback(run, "umount", mnt)
            return mnt

        yield make


class Tools:
    """Helpers the storage tests share (a fixture, since test modules cannot import each other)."""

    run = staticmethod(run)
    run_bytes = staticmethod(run_bytes)

    @staticmethod
    def pattern(length: int, seed: int) -> bytes:
        return random.Random(seed).randbytes(length)

    @staticmethod
    def sparse_file(path: Path, size: int, data_runs: list[tuple[int, int]], seed: int) -> bytes:
        """A sparse file of ``size`` bytes with pseudo-random data only in ``data_runs``;
        returns its full contents."""
        content = bytearray(size)
        with path.open("wb") as f:
            f.truncate(size)
            for offset, length in data_runs:
                data = Tools.pattern(length, seed + offset)
                f.seek(offset)
                f.write(data)
                content[offset : offset + length] = data
        return bytes(content)

    @staticmethod
    def ext4_image(path: Path, size_mib: int, files: dict[str, bytes]) -> None:
        """An ext4 image populated from ``files`` with mkfs.ext4 -d."""
        src = path.with_name(path.name + ".d")
        src.mkdir()
        for name, data in files.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(data)
        with path.open("wb") as f:
            f.truncate(size_mib << 20)
        run("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", src, path)
        shutil.rmtree(src)

    @staticmethod
    def fs_used(path: Path) -> int:
        os.sync()
        st = os.statvfs(path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    @staticmethod
    def fs_free(path: Path) -> int:
        os.sync()
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    @staticmethod
    @contextlib.contextmanager
    def mounted(image_or_device: Path, mnt: Path) -> Iterator[Path]:
        """Mount an ext4 file (through its own loop device) or a block device; always unmount."""
        mnt.mkdir(exist_ok=True)
        with contextlib.ExitStack() as stack:
            target = image_or_device
            if image_or_device.is_file():
                device = loopdev.attach(image_or_device, read_only=False)
                stack.callback(loopdev.detach, device)
                target = device.path
            run("mount", "-t", "ext4", target, mnt)
            stack.callback(run, "umount", mnt)
            yield mnt


@pytest.fixture
def tools() -> type[Tools]:
    return Tools
