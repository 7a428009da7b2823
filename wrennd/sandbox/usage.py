"""What a sandbox really costs the host: allocated disk blocks and resident memory.

Sizes are allocated blocks (``st_blocks``), never apparent sizes: a sparse
64 GiB layer that holds 10 MiB of writes counts 10 MiB; and a reflinked
layer counts only the extents it does not share with its base (FIEMAP).  Blocking: call it
from a thread.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path
from typing import Any


def allocated(path: Path, skip: str | None = None) -> int:
    """Allocated bytes of a file, or of every file under a directory (links counted once;
    names matching the glob ``skip`` left out)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    paths = [path] if not path.is_dir() else [Path(d) / f for d, _, fs in os.walk(path) for f in fs]
    for p in paths:
        if skip is not None and p.match(skip):
            continue
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


_FS_IOC_FIEMAP = 0xC020660B
_FIEMAP_FLAG_SYNC = 0x1
_EXTENT_LAST = 0x1
_EXTENT_SHARED = 0x2000
_HEAD = struct.Struct("=QQIIII")
_EXTENT = struct.Struct("=QQQQQIIII")
_BATCH = 256


def exclusive_bytes(path: Path, base: Path | None = None) -> int:
    """Bytes of a file's extents that no other file shares (FIEMAP): what a reflinked
    layer really added; with ``base``, the bytes it does not share with ``base`` (a copy
    kept with a snapshot shares the rest).  Falls back to allocated blocks where FIEMAP
    is not supported."""
    if base is not None:
        theirs = _physical(base)
        mine = _physical(path)
        if mine is not None and theirs is not None:
            return _outside(mine, theirs)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    total, start = 0, 0
    try:
        while True:
            buf = bytearray(_HEAD.size + _BATCH * _EXTENT.size)
            _HEAD.pack_into(buf, 0, start, (1 << 64) - 1 - start, _FIEMAP_FLAG_SYNC, 0, _BATCH, 0)
            try:
                fcntl.ioctl(fd, _FS_IOC_FIEMAP, buf)
            except OSError as e:
                if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
                    return os.fstat(fd).st_blocks * 512
                raise
            mapped = _HEAD.unpack_from(buf)[3]
            if mapped == 0:
                return total
            for i in range(mapped):
                fields = _EXTENT.unpack_from(buf, _HEAD.size + i * _EXTENT.size)
                logical, length, flags = fields[0], fields[2], fields[5]
                if not flags & _EXTENT_SHARED:
                    total += length
                if flags & _EXTENT_LAST:
                    return total
                start = logical + length
    finally:
        os.close(fd)


def _physical(path: Path) -> list[tuple[int, int]] | None:
    """Sorted (physical start, length) of a file's extents; None without FIEMAP."""
    out: list[tuple[int, int]] = []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    try:
        start = 0
        while True:
            buf = bytearray(_HEAD.size + _BATCH * _EXTENT.size)
            _HEAD.pack_into(buf, 0, start, (1 << 64) - 1 - start, _FIEMAP_FLAG_SYNC, 0, _BATCH, 0)
            try:
                fcntl.ioctl(fd, _FS_IOC_FIEMAP, buf)
            except OSError as e:
                if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
                    return None
                raise
            mapped = _HEAD.unpack_from(buf)[3]
            last = mapped == 0
            for i in range(mapped):
                logical, physical, length, _, _, flags = _EXTENT.unpack_from(
                    buf, _HEAD.size + i * _EXTENT.size
                )[:6]
                out.append((physical, length))
                start = logical + length
                last = last or bool(flags & _EXTENT_LAST)
            if last:
                return sorted(out)
    finally:
        os.close(fd)


def _outside(mine: list[tuple[int, int]], theirs: list[tuple[int, int]]) -> int:
    """Bytes of ``mine``'s ranges that no range of ``theirs`` covers (both sorted)."""
    total, j = 0, 0
    for start, length in mine:
        pos, end = start, start + length
        while j < len(theirs) and theirs[j][0] + theirs[j][1] <= pos:
            j += 1
        k = j
        while pos < end and k < len(theirs) and theirs[k][0] < end:
            t_start, t_end = theirs[k]
            t_end += t_start
            if t_start > pos:
                total += t_start - pos
            pos = max(pos, t_end)
            k += 1
        if pos < end:
            total += end - pos
    return total


def resident_bytes(pid: int) -> int | None:
    """VmRSS plus hugetlb pages of a process (the VMM holds the guest's memory; RSS does
    not count a 2 MiB guest's hugetlb pages), None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kib = {k: v for k, _, v in (line.partition(":") for line in text.splitlines())}
    if "VmRSS" not in kib:
        return None
    return sum(int(kib[k].split()[0]) for k in ("VmRSS", "HugetlbPages") if k in kib) * 1024


def usage(
    sandbox_dir: Path, layer: Path | None, vmm_pid: int | None, base: Path | None = None
) -> dict[str, Any]:
    # The layer kept with the snapshot shares the layer's extents: it is disk, not memory.
    snapshot = allocated(sandbox_dir / "snapshot", skip="rootfs.g*.layer")
    disk = exclusive_bytes(layer, base) if layer is not None else 0
    return {
        "disk_bytes": disk,
        "snapshot_bytes": snapshot,
        "memory_bytes": None if vmm_pid is None else resident_bytes(vmm_pid),
    }
