"""Snapshot directory layout and atomic file writes.

A snapshot directory holds (other components add vmstate, rootfs meta, ...)::

    <snapshot_dir>/memory.header        memory header v1 (wrennd.snapshot.header)
    <snapshot_dir>/memory.prefetch      prefetch map, optional (wrennd.snapshot.prefetch)
    <snapshot_dir>/memfiles/<build_id>  a hard link to <store>/<build_id> for every
                                        generation the header names, and nothing else

The generation store (default ``state_dir/memfiles``) holds every generation
file once, named by its build id (UUID, canonical 36-character form).  A
store file's link count minus one is the number of snapshot directories
whose header names it; a store file with link count 1 is garbage.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

HEADER_NAME = "memory.header"
PREFETCH_NAME = "memory.prefetch"
LINKS_DIR = "memfiles"
TMP_PREFIX = ".tmp-"


def header_path(snapshot_dir: Path) -> Path:
    return snapshot_dir / HEADER_NAME


def prefetch_path(snapshot_dir: Path) -> Path:
    return snapshot_dir / PREFETCH_NAME


def links_dir(snapshot_dir: Path) -> Path:
    return snapshot_dir / LINKS_DIR


def link_path(snapshot_dir: Path, build_id: uuid.UUID) -> Path:
    return snapshot_dir / LINKS_DIR / str(build_id)


def store_path(store: Path, build_id: uuid.UUID) -> Path:
    return store / str(build_id)


def parse_build_id(name: str) -> uuid.UUID | None:
    """The build id a file name stands for, or None when it is not one."""
    try:
        value = uuid.UUID(name)
    except ValueError:
        return None
    return value if str(value) == name else None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(directory: Path, name: str) -> Path:
    return directory / f"{TMP_PREFIX}{name}-{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def _dir_locked(directory: Path) -> Iterator[None]:
    """flock the directory itself: orders temp-file creation against stale-temp removal."""
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(dfd)


class Staged:
    """A new file being written under a temporary name beside its final path."""

    def __init__(self, path: Path, tmp: Path, fd: int) -> None:
        self.path, self.tmp, self.fd = path, tmp, fd
        self.published = False

    def publish(self) -> None:
        """fsync, rename to the final path, fsync the directory."""
        os.fsync(self.fd)
        self.tmp.rename(self.path)
        self.published = True
        fsync_dir(self.path.parent)


@contextlib.contextmanager
def staged(path: Path, mode: int = 0o644) -> Iterator[Staged]:
    """A temporary file beside `path`; removed on exit unless `publish()`ed.

    While open it holds an flock, so `remove_stale_temps` leaves it alone;
    after a crash the lock is gone and the file is cleaned up."""
    tmp = temp_name(path.parent, path.name)
    with _dir_locked(path.parent):
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        fcntl.flock(fd, fcntl.LOCK_EX)
    st = Staged(path, tmp, fd)
    try:
        yield st
    finally:
        os.close(fd)
        if not st.published:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def replacing(path: Path, mode: int = 0o644) -> Iterator[int]:
    """Yield the fd of a new temporary file that replaces `path` atomically on normal exit."""
    with staged(path, mode) as st:
        yield st.fd
        st.publish()


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same directory, fsync, rename, fsync the directory."""
    with replacing(path) as fd:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove temporary files a crashed writer left (those no live writer holds locked)."""
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    with _dir_locked(directory):
        for p in directory.glob(f"{TMP_PREFIX}*"):
            try:
                fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer's file
            finally:
                os.close(fd)
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
