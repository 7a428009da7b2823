"""A Full + Diff chain, collapse and export on each filesystem a host may use for state_dir.

SEEK_DATA/SEEK_HOLE, hole punching and copy_file_range behave differently per
filesystem (xfs unwritten extents, btrfs reflinks on copy, tmpfs pages), so
the chain runs for real on tmpfs and on ext4, xfs and btrfs in loop files.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from wrennd.snapshot.chain import collapse, export, verify
from wrennd.snapshot.ingest import ingest_diff, ingest_full
from wrennd.snapshot.store import generation_files

BS = 4096
PAGES = 256
MKFS = {"ext4": ["mkfs.ext4", "-q", "-F"], "xfs": ["mkfs.xfs", "-q", "-f"],
        "btrfs": ["mkfs.btrfs", "-q", "-f"]}  # fmt: skip


@pytest.fixture(params=["tmpfs", "ext4", "xfs", "btrfs"])
def mounted(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    fs: str = request.param
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if fs == "tmpfs":
        cmd = ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)]
    else:
        image = tmp_path / f"{fs}.img"
        with image.open("wb") as f:
            f.truncate(320 << 20)  # xfs needs at least 300 MiB
        subprocess.run([*MKFS[fs], str(image)], check=True, capture_output=True)
        cmd = ["mount", "-o", "loop", str(image), str(mnt)]
    subprocess.run(cmd, check=True, capture_output=True)
    try:
        fstype = subprocess.run(["stat", "-f", "-c", "%T", str(mnt)], check=True,
                                capture_output=True, text=True).stdout.strip()  # fmt: skip
        assert fstype.startswith(fs.replace("ext4", "ext2")), fstype  # stat says ext2/ext3
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def write_diff(path: Path, memory: bytearray, pages: list[int], rng: random.Random) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, PAGES * BS)
        for p in pages:
            data = bytes(BS) if p % 5 == 0 else rng.randbytes(BS)
            os.pwrite(fd, data, p * BS)
            memory[p * BS : (p + 1) * BS] = data
    finally:
        os.close(fd)


@pytest.mark.root
def test_chain_on_filesystem(mounted: Path) -> None:
    rng = random.Random(7)
    store, sdir = mounted / "memfiles", mounted / "snap"
    memory = bytearray(PAGES * BS)
    for p in rng.sample(range(PAGES), PAGES // 2):
        memory[p * BS : (p + 1) * BS] = rng.randbytes(BS)
    (mounted / "full.mem").write_bytes(bytes(memory))
    ingest_full(mounted / "full.mem", sdir, store)
    for _ in range(3):
        write_diff(mounted / "diff.mem", memory, rng.sample(range(PAGES), 20), rng)
        ingest_diff(mounted / "diff.mem", sdir, sdir, store)
        export(sdir, mounted / "out", store)
        assert (mounted / "out").read_bytes() == memory
    header = collapse(sdir, store)
    assert verify(sdir, store) == []
    assert generation_files(store) == set(header.generations)
    export(sdir, mounted / "out", store)
    assert (mounted / "out").read_bytes() == memory
