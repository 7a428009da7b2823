"""Sparse copies, device copies, atomic writes (on the test machine's own filesystem)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from wrennd import durable
from wrennd.storage import fileops

MiB = 1 << 20


def sparse(path: Path, size: int, runs: list[tuple[int, int]], seed: int = 1) -> bytes:
    content = bytearray(size)
    with path.open("wb") as f:
        f.truncate(size)
        for off, n in runs:
            data = random.Random(seed + off).randbytes(n)
            f.seek(off)
            f.write(data)
            content[off : off + n] = data
    return bytes(content)


def extents(path: Path) -> list[tuple[int, int]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return fileops.data_extents(fd, path.stat().st_size)
    finally:
        os.close(fd)


def copy(src: Path, dst: Path, fn: object) -> None:
    s = os.open(src, os.O_RDONLY)
    d = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    try:
        if fn is fileops.copy_device_sparse:
            fileops.copy_device_sparse(s, d, src.stat().st_size)
        else:
            fileops.copy_sparse(s, d)
    finally:
        os.close(s)
        os.close(d)


RUNS = [(0, 4096), (MiB, 3 * 4096 + 17), (5 * MiB - 8192, 8192)]


def test_copy_sparse_keeps_data_and_holes(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    content = sparse(src, 5 * MiB, RUNS)
    copy(src, dst, fileops.copy_sparse)
    assert dst.read_bytes() == content
    assert extents(dst) == extents(src)
    assert fileops.allocated_bytes(dst) <= fileops.allocated_bytes(src) + 64 * 1024


def test_copy_sparse_of_a_file_ending_in_a_hole(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    content = sparse(src, 3 * MiB, [(4096, 4096)])
    copy(src, dst, fileops.copy_sparse)
    assert dst.stat().st_size == 3 * MiB and dst.read_bytes() == content


def test_read_write_fallback(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    content = sparse(src, 2 * MiB, [(0, 2 * MiB)])
    s, d = os.open(src, os.O_RDONLY), os.open(dst, os.O_RDWR | os.O_CREAT)
    try:
        os.ftruncate(d, 2 * MiB)
        fileops._copy_range_rw(s, d, 4096, 2 * MiB - 4096)
    finally:
        os.close(s)
        os.close(d)
    assert dst.read_bytes() == bytes(4096) + content[4096:]


def test_device_copy_turns_zero_blocks_into_holes(tmp_path: Path) -> None:
    # A "device" with explicit zero blocks written out: the copy must not allocate them.
    src, dst = tmp_path / "dev", tmp_path / "dst"
    size = fileops.COPY_CHUNK + 3 * MiB
    data = bytearray(size)
    data[100:5000] = b"\x01" * 4900
    data[fileops.COPY_CHUNK - 10 : fileops.COPY_CHUNK + 10] = b"\x02" * 20  # spans two chunks
    data[size - 1] = 3
    src.write_bytes(bytes(data))
    copy(src, dst, fileops.copy_device_sparse)
    assert dst.read_bytes() == bytes(data)
    assert extents(dst) == [
        (0, 8192),
        (fileops.COPY_CHUNK - 4096, 8192),
        (size - 4096, 4096),
    ]


def test_write_atomic_replaces_whole(tmp_path: Path) -> None:
    p = tmp_path / "rec.json"
    durable.atomic_write(p, b"one")
    durable.atomic_write(p, b"two")
    assert p.read_bytes() == b"two"
    assert [x.name for x in tmp_path.iterdir()] == ["rec.json"]


def test_publish_never_replaces(tmp_path: Path) -> None:
    final = tmp_path / "image"
    final.write_bytes(b"old")
    tmp = durable.temp_name(final)
    tmp.write_bytes(b"new")
    assert durable.is_temp_name(tmp.name) and not durable.is_temp_name("image")
    with pytest.raises(FileExistsError):
        durable.publish_no_replace(tmp, final)
    assert final.read_bytes() == b"old"
    final.unlink()
    durable.publish_no_replace(tmp, final)
    assert final.read_bytes() == b"new" and not tmp.exists()
