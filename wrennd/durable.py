"""Durable writes: whatever wrennd persists reaches its final name complete, or not at all.

One scheme for the whole tree (the daemon, and the guest agent, whose bundle
carries this module):

- a new file is written under a hidden temporary sibling,
  ``.tmp-<name>-<random>``, fsynced, renamed over its final name, and the
  directory is fsynced, so a crash leaves the old or the new version;
- while a writer works, it holds an flock on its temporary file, so
  ``remove_stale_temps`` removes only what a crashed writer left;
- every rename into place is one of ``publish`` (replace),
  ``publish_no_replace`` (refuse an existing name, files and directories),
  ``replace_dir`` (swap a whole directory) or ``move`` (a file to a fresh name,
  possibly across directories); nothing else renames.

Standard library only: the guest agent imports it.  Blocking: async callers
use a thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def temp_name(final: Path) -> Path:
    """A hidden, unique sibling of ``final``; cleanup recognizes it by its prefix."""
    return final.with_name(f"{TMP_PREFIX}{final.name}-{secrets.token_hex(6)}")


def is_temp_name(name: str) -> bool:
    return name.startswith(TMP_PREFIX)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    """fsync a file (or a directory) by name."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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
        """fsync, rename over the final path, fsync the directory."""
        os.fsync(self.fd)
        os.rename(self.tmp, self.path)
        self.published = True
        fsync_dir(self.path.parent)

    def publish_no_replace(self) -> None:
        """As ``publish``, but FileExistsError if the final name exists."""
        os.fsync(self.fd)
        _rename_noreplace(self.tmp, self.path)
        self.published = True
        fsync_dir(self.path.parent)


@contextlib.contextmanager
def staged(path: Path, mode: int = 0o600) -> Iterator[Staged]:
    """A temporary file beside ``path`` (mode ``mode`` whatever the umask); removed on exit
    unless published.  It holds an flock while open: a crash releases it, and only
    then may ``remove_stale_temps`` take the file."""
    tmp = temp_name(path)
    with _dir_locked(path.parent):
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        fcntl.flock(fd, fcntl.LOCK_EX)
    st = Staged(path, tmp, fd)
    try:
        os.fchmod(fd, mode)  # the umask must not loosen or tighten what was asked
        yield st
    finally:
        os.close(fd)
        if not st.published:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def replacing(path: Path, mode: int = 0o600) -> Iterator[int]:
    """The fd of a new file that replaces ``path`` atomically on normal exit."""
    with staged(path, mode) as st:
        yield st.fd
        st.publish()


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``, atomically and durably."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"atomic_write takes bytes, not {type(data).__name__}")
    with replacing(path, mode) as fd:
        write_all(fd, bytes(data))


def atomic_write_json(path: Path, obj: Any, mode: int = 0o600) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), mode)


def _sync_before_rename(path: Path) -> None:
    """A regular file's data must be on disk before its name says it is complete."""
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        fsync_path(path)


def publish(tmp: Path, final: Path) -> None:
    """Rename a finished file (or socket, or directory) over ``final``, durably."""
    _sync_before_rename(tmp)
    os.rename(tmp, final)
    fsync_dir(final.parent)


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    import ctypes  # here, not at import: the guest agent never needs it

    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _rename_noreplace(src: Path, dst: Path) -> None:
    try:
        _renameat2(src, dst, _RENAME_NOREPLACE)
    except OSError as e:
        if e.errno == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "already exists", str(dst)) from None
        if e.errno not in (errno.EINVAL, errno.ENOSYS) or src.is_dir():
            raise
        # A filesystem without RENAME_NOREPLACE: link() refuses an existing name too.
        os.link(src, dst)
        src.unlink()


def publish_no_replace(tmp: Path, final: Path) -> None:
    """Rename a finished file or directory to ``final``; FileExistsError if it exists."""
    _sync_before_rename(tmp)
    _rename_noreplace(tmp, final)
    fsync_dir(final.parent)


def replace_dir(new: Path, final: Path) -> None:
    """Make the finished directory ``new`` be ``final`` in one step, the old one removed after.

    A crash leaves the old or the new directory at ``final`` (and maybe the other
    under a temporary name, which ``remove_stale_temps`` does not touch: directories
    are the caller's to clean)."""
    _sync_before_rename(new)
    if not final.exists():
        publish_no_replace(new, final)
        return
    _renameat2(new, final, _RENAME_EXCHANGE)
    fsync_dir(final.parent)
    shutil.rmtree(new)  # now the old directory


def move(src: Path, dest: Path) -> None:
    """Move a file to a new name that nothing else uses (OSError EXDEV across filesystems:
    the caller decides whether to copy)."""
    _sync_before_rename(src)
    _rename_noreplace(src, dest)
    fsync_dir(dest.parent)
    if src.parent != dest.parent:
        fsync_dir(src.parent)


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove the temporary files crashed writers left (those no live writer holds locked)."""
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    with _dir_locked(directory):
        for p in directory.glob(f"{TMP_PREFIX}*"):
            try:
                fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
            except (FileNotFoundError, IsADirectoryError):
                continue
            except OSError as e:
                if e.errno != errno.ELOOP:
                    raise
                p.unlink(missing_ok=True)  # a stale symlink is never a live writer's
                removed.append(p)
                continue
            try:
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    continue
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer's file
            finally:
                os.close(fd)
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
