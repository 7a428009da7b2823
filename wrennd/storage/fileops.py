"""Blocking file primitives of the storage backends: reflink, sparse copies, atomic publish.

All of these block (they copy gigabytes or issue ioctls): call them on an
executor thread.  Every copy keeps holes as holes, so a sparse 1 GiB image
costs only its data blocks.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from wrennd import zeroscan

FICLONE = 0x40049409  # _IOW(0x94, 9, int)

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# copy_file_range cannot serve this pair of files: fall back to read/write.
_NO_COPY_RANGE = (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)

COPY_CHUNK = 8 << 20
SCAN_BLOCK = 4096


def is_no_space(e: OSError) -> bool:
    return e.errno in NO_SPACE_ERRNOS


def reflink(src_fd: int, dst_fd: int) -> None:
    """Make dst share all of src's extents (FICLONE); raises OSError (EOPNOTSUPP, EXDEV, ...)."""
    fcntl.ioctl(dst_fd, FICLONE, src_fd)


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of each data run of a file, found with SEEK_DATA/SEEK_HOLE."""
    out = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole remains
                break
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        out.append((start, end - start))
        pos = end
    return out


def _copy_range_rw(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    buf = bytearray(min(COPY_CHUNK, length))
    view = memoryview(buf)
    done = 0
    while done < length:
        n = os.preadv(src_fd, [view[: min(len(buf), length - done)]], offset + done)
        if n == 0:
            raise OSError(errno.EIO, f"source ended at {offset + done}, expected more data")
        _write_all(dst_fd, view[:n], offset + done)
        done += n


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def _copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    done = 0
    while done < length:
        try:
            n = os.copy_file_range(
                src_fd, dst_fd, min(length - done, 1 << 30), offset + done, offset + done
            )
        except OSError as e:
            if e.errno not in _NO_COPY_RANGE or done:
                raise
            _copy_range_rw(src_fd, dst_fd, offset, length)
            return
        if n == 0:
            raise OSError(errno.EIO, f"source ended at {offset + done}, expected more data")
        done += n


def copy_sparse(src_fd: int, dst_fd: int) -> None:
    """Copy a regular file's data runs into an empty dst of the same size; holes stay holes.

    copy_file_range lets the filesystem share or offload the copy where it can.
    """
    size = os.fstat(src_fd).st_size
    os.ftruncate(dst_fd, size)
    for offset, length in data_extents(src_fd, size):
        _copy_range(src_fd, dst_fd, offset, length)


def copy_device_sparse(src_fd: int, dst_fd: int, size: int) -> None:
    """Copy ``size`` bytes of a block device into an empty file, leaving all-zero blocks as holes.

    Block devices report no holes, so zero blocks are found by the native scanner
    (GIL released) on each chunk read.
    """
    os.ftruncate(dst_fd, size)
    buf = bytearray(COPY_CHUNK)
    view = memoryview(buf)
    offset = 0
    while offset < size:
        want = min(COPY_CHUNK, size - offset)
        n = os.preadv(src_fd, [view[:want]], offset)
        if n != want:
            raise OSError(errno.EIO, f"short read at {offset}: {n} of {want} bytes")
        bitmap = zeroscan.scan_buffer(view[:n], SCAN_BLOCK)
        for first, count in bitmap.runs(zero=False):
            lo = first * SCAN_BLOCK
            hi = min(n, (first + count) * SCAN_BLOCK)
            _write_all(dst_fd, view[lo:hi], offset + lo)
        offset += n


def create_exclusive(path: Path, mode: int = 0o600) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)


def unlink_quiet(path: Path) -> None:
    path.unlink(missing_ok=True)


def allocated_bytes(path: Path) -> int:
    """Bytes of disk blocks a file has allocated (not its apparent size)."""
    return path.stat().st_blocks * 512
