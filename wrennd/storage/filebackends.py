"""File backends: each sandbox gets its own full image file, made by reflink or sparse copy.

The file is the drive the VMM opens, so detach/attach (pause/resume) only
check it is there: every write stays in it.  Flatten makes an independent
image the same way the sandbox's file was made.
"""

from __future__ import annotations

import errno
import logging
import os
from abc import abstractmethod
from collections.abc import Iterable
from pathlib import Path

from wrennd import durable
from wrennd.log import kv
from wrennd.storage import fileops
from wrennd.storage.backend import RootfsRecord, StaleReport, StorageBackend
from wrennd.storage.errors import BackendUnavailable, StorageError

log = logging.getLogger("wrennd.storage")


class _FileBackend(StorageBackend):
    layer_name = "rootfs.ext4"

    @abstractmethod
    def _clone(self, src_fd: int, dst_fd: int) -> None:
        """Make the empty file dst_fd a copy of src_fd (by reflink or by copying)."""

    def _clone_path(self, src: Path, dst_fd: int) -> None:
        fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._clone(fd, dst_fd)
            os.fsync(dst_fd)
        finally:
            os.close(fd)

    def _make_layer(self, sandbox_id: str, base: Path, size: int, layer: Path) -> Path:
        fd = fileops.create_exclusive(layer)
        try:
            self._clone_path(base, fd)
        finally:
            os.close(fd)
        durable.fsync_dir(layer.parent)
        return layer

    def _attach(self, rec: RootfsRecord) -> Path:
        if not rec.layer.is_file():
            raise StorageError(f"sandbox {rec.sandbox_id}: its rootfs file {rec.layer} is gone")
        return rec.layer

    def _detach(self, rec: RootfsRecord) -> None:
        """Nothing to tear down: the VMM opened the file itself."""

    def _flatten_into(self, rec: RootfsRecord, fd: int) -> None:
        self._clone_path(rec.layer, fd)

    def cleanup_stale(self, running_ids: Iterable[str]) -> StaleReport:
        running = set(running_ids)
        report = StaleReport()
        self._remove_temp_files(report)
        for rec in self.records():
            if rec.attached and rec.sandbox_id not in running:
                self._mark_detached(rec, report)
        log.info("storage stale cleanup", extra=kv(backend=self.name, **report.__dict__))
        return report


class ReflinkBackend(_FileBackend):
    """FICLONE: the clone shares every extent with the base until either side writes."""

    name = "reflink"

    def _clone(self, src_fd: int, dst_fd: int) -> None:
        try:
            fileops.reflink(src_fd, dst_fd)
        except OSError as e:
            if fileops.is_no_space(e):
                raise
            raise BackendUnavailable(
                self.name, f"FICLONE failed: {e.strerror} ({reflink_hint(e)})"
            ) from e


class CopyBackend(_FileBackend):
    """A sparse copy: only the base's data runs are copied (SEEK_DATA/SEEK_HOLE)."""

    name = "copy"

    def _clone(self, src_fd: int, dst_fd: int) -> None:
        fileops.copy_sparse(src_fd, dst_fd)


def reflink_hint(e: OSError) -> str:
    if e.errno == errno.EXDEV:
        return "source and clone are on different filesystems"
    if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
        return "the filesystem does not support reflinks (btrfs, or xfs with reflink=1, do)"
    return "unexpected error"
