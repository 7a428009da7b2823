"""The storage interface every backend implements, and what they share.

A backend gives each sandbox a writable rootfs made from a read-only base
image and tracks it in ``sandboxes/<id>/rootfs.json`` (written atomically):

- ``create``: make the sandbox's layer from a base image and attach it;
  returns the record whose ``drive`` is the path the VMM opens.
- ``detach`` (pause) / ``attach`` (resume): tear down / bring back whatever
  the VMM opens; the layer file, and so every write, is kept.
- ``flatten``: write base + layer into a new, independent image (templates).
- ``remove``: detach if needed and delete the layer.
- ``cleanup_stale``: at startup, undo what a crash left behind.
- ``delete_base``: delete a base image unless a sandbox was made from it.

Every method BLOCKS (copies, ioctls, dmsetup): the daemon calls them through
``wrennd.storage.aio.AsyncStorage``, which runs them on its own executor.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wrennd import durable
from wrennd.log import kv
from wrennd.storage import fileops
from wrennd.storage.errors import (
    BadBaseImage,
    BadSandboxId,
    BaseImageInUse,
    BaseImageMissing,
    FlattenTargetExists,
    NoSpace,
    RecordCorrupt,
    SandboxStorageBusy,
    SandboxStorageExists,
    SandboxStorageNotFound,
    WrongAttachState,
)

log = logging.getLogger("wrennd.storage")

RECORD_NAME = "rootfs.json"
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SECTOR = 512


@dataclasses.dataclass(frozen=True)
class RootfsRecord:
    """What a sandbox's rootfs is made of; persisted as ``rootfs.json``."""

    sandbox_id: str
    backend: str
    base_image: Path
    base_size: int
    layer: Path  # the file that holds the sandbox's writes (CoW store or full clone)
    drive: Path  # what the VMM opens while attached (dm device, or the layer itself)
    attached: bool

    def to_json(self) -> bytes:
        d: dict[str, Any] = dataclasses.asdict(self)
        for k in ("base_image", "layer", "drive"):
            d[k] = str(d[k])
        return json.dumps(d, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, where: Path) -> RootfsRecord:
        try:
            d = json.loads(data)
            return cls(
                sandbox_id=str(d["sandbox_id"]),
                backend=str(d["backend"]),
                base_image=Path(d["base_image"]),
                base_size=int(d["base_size"]),
                layer=Path(d["layer"]),
                drive=Path(d["drive"]),
                attached=bool(d["attached"]),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise RecordCorrupt(where, f"{type(e).__name__}: {e}") from e


@dataclasses.dataclass
class StaleReport:
    """What ``cleanup_stale`` removed (device names, loop devices, temp files)."""

    dm_devices: list[str] = dataclasses.field(default_factory=list)
    loop_devices: list[str] = dataclasses.field(default_factory=list)
    temp_files: list[str] = dataclasses.field(default_factory=list)
    marked_detached: list[str] = dataclasses.field(default_factory=list)


def check_sandbox_id(sandbox_id: str) -> None:
    if not _ID.match(sandbox_id):
        raise BadSandboxId(sandbox_id)


def check_base_image(path: Path) -> tuple[Path, int]:
    """The resolved path and size of a usable base image, or a typed error saying why not."""
    try:
        resolved = path.resolve(strict=True)
        st = resolved.stat()
    except FileNotFoundError as e:
        raise BaseImageMissing(path) from e
    except OSError as e:
        raise BaseImageMissing(path, e.strerror or str(e)) from e
    if not resolved.is_file():
        raise BaseImageMissing(path, "not a regular file")
    if st.st_size == 0 or st.st_size % SECTOR:
        raise BadBaseImage(path, f"size {st.st_size} is not a positive multiple of {SECTOR}")
    return resolved, st.st_size


class StorageBackend(ABC):
    """Shared bookkeeping; subclasses make, attach, detach and flatten layers."""

    name: str = ""
    layer_name: str = ""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.sandboxes_dir = state_dir / "sandboxes"
        self.sandboxes_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._busy: set[str] = set()
        self._creating: dict[str, Path] = {}  # sandbox id -> base, creates in flight

    # ---- backend-specific steps -------------------------------------------------
    @abstractmethod
    def _make_layer(self, sandbox_id: str, base: Path, size: int, layer: Path) -> Path:
        """Create ``layer`` from ``base`` and attach it; return the drive path.
        On failure undo everything it did (the caller removes ``layer``)."""

    @abstractmethod
    def _attach(self, rec: RootfsRecord) -> Path:
        """Bring back the drive of a detached layer; return its path."""

    @abstractmethod
    def _detach(self, rec: RootfsRecord) -> None:
        """Release the drive; the VMM must have closed it."""

    @abstractmethod
    def _flatten_into(self, rec: RootfsRecord, fd: int) -> None:
        """Write base + layer into the empty, open file ``fd``."""

    @abstractmethod
    def cleanup_stale(self, running_ids: Iterable[str]) -> StaleReport:
        """Undo what a crash left: devices and temp files of sandboxes not running now."""

    # ---- paths and records ------------------------------------------------------
    def sandbox_dir(self, sandbox_id: str) -> Path:
        check_sandbox_id(sandbox_id)
        return self.sandboxes_dir / sandbox_id

    def record_path(self, sandbox_id: str) -> Path:
        return self.sandbox_dir(sandbox_id) / RECORD_NAME

    def record(self, sandbox_id: str) -> RootfsRecord:
        path = self.record_path(sandbox_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise SandboxStorageNotFound(sandbox_id, path) from e
        return RootfsRecord.from_json(data, path)

    def records(self) -> Iterator[RootfsRecord]:
        for path in sorted(self.sandboxes_dir.glob(f"*/{RECORD_NAME}")):
            try:
                yield RootfsRecord.from_json(path.read_bytes(), path)
            except (OSError, RecordCorrupt):
                log.warning("unreadable rootfs record skipped", extra=kv(path=path))

    def _save(self, rec: RootfsRecord) -> None:
        durable.atomic_write(self.record_path(rec.sandbox_id), rec.to_json())

    @contextmanager
    def _exclusive(self, sandbox_id: str) -> Iterator[None]:
        """One storage operation per sandbox at a time; a second one is refused, not queued."""
        with self._lock:
            if sandbox_id in self._busy:
                raise SandboxStorageBusy(sandbox_id)
            self._busy.add(sandbox_id)
        try:
            yield
        finally:
            with self._lock:
                self._busy.discard(sandbox_id)

    # ---- the interface ----------------------------------------------------------
    def create(self, sandbox_id: str, base_image: Path) -> RootfsRecord:
        """Make and attach a writable rootfs for ``sandbox_id`` from ``base_image``."""
        sdir = self.sandbox_dir(sandbox_id)
        with self._exclusive(sandbox_id):
            if (sdir / RECORD_NAME).exists():
                raise SandboxStorageExists(sandbox_id, sdir / RECORD_NAME)
            # Registered under the lock delete_base holds, so a base cannot
            # vanish between this check and the copy.
            with self._lock:
                base, size = check_base_image(base_image)
                self._creating[sandbox_id] = base
            try:
                return self._create_locked(sandbox_id, sdir, base, size)
            finally:
                with self._lock:
                    del self._creating[sandbox_id]

    def _create_locked(self, sandbox_id: str, sdir: Path, base: Path, size: int) -> RootfsRecord:
        made_dir = not sdir.exists()
        layer = sdir / self.layer_name
        attached = False
        if layer.exists():  # a create that crashed before its record was written
            log.warning("leftover layer without a record removed", extra=kv(layer=layer))
            layer.unlink()
        try:
            sdir.mkdir(parents=True, exist_ok=True)
            drive = self._make_layer(sandbox_id, base, size, layer)
            attached = True
            rec = RootfsRecord(sandbox_id, self.name, base, size, layer, drive, True)
            self._save(rec)
        except BaseException as e:
            try:
                self._undo_create(sandbox_id, base, size, layer, sdir, made_dir, attached)
            except Exception as undo:  # report the first failure, not the rollback's
                log.error(
                    "rollback of a failed create failed",
                    extra=kv(sandbox=sandbox_id, error=undo, cause=e),
                )
            if isinstance(e, OSError) and fileops.is_no_space(e):
                raise NoSpace(f"create rootfs of sandbox {sandbox_id}", sdir, str(e)) from e
            raise
        log.info(
            "sandbox rootfs created",
            extra=kv(sandbox=sandbox_id, backend=self.name, base=base, drive=drive),
        )
        return rec

    def _undo_create(
        self,
        sandbox_id: str,
        base: Path,
        size: int,
        layer: Path,
        sdir: Path,
        made_dir: bool,
        attached: bool,
    ) -> None:
        if attached:
            rec = RootfsRecord(sandbox_id, self.name, base, size, layer, layer, True)
            self._detach(rec)
        fileops.unlink_quiet(layer)
        fileops.unlink_quiet(sdir / RECORD_NAME)
        if made_dir:
            try:
                sdir.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                log.warning("sandbox dir not empty after failed create", extra=kv(dir=sdir))

    def detach(self, sandbox_id: str) -> RootfsRecord:
        """Release the drive for a pause (the VMM must have closed it); the layer stays."""
        with self._exclusive(sandbox_id):
            rec = self.record(sandbox_id)
            if not rec.attached:
                raise WrongAttachState(sandbox_id, False, "detach")
            self._detach(rec)
            rec = dataclasses.replace(rec, attached=False)
            self._save(rec)
            log.info("sandbox rootfs detached", extra=kv(sandbox=sandbox_id, backend=self.name))
            return rec

    def attach(self, sandbox_id: str) -> RootfsRecord:
        """Bring the drive back for a resume, with every write the sandbox made."""
        with self._exclusive(sandbox_id):
            rec = self.record(sandbox_id)
            if rec.attached:
                raise WrongAttachState(sandbox_id, True, "attach")
            check_base_image(rec.base_image)
            rec = dataclasses.replace(rec, drive=self._attach(rec), attached=True)
            try:
                self._save(rec)
            except BaseException:
                self._detach(rec)
                raise
            log.info("sandbox rootfs attached", extra=kv(sandbox=sandbox_id, drive=rec.drive))
            return rec

    def flatten(self, sandbox_id: str, dest: Path) -> Path:
        """Write base + the sandbox's writes into a new image at ``dest`` (never replaced).

        The guest must not be writing (paused, or its filesystem frozen).  On any
        failure, ENOSPC included, nothing is left at ``dest`` or beside it.
        """
        with self._exclusive(sandbox_id):
            rec = self.record(sandbox_id)
            if dest.exists():
                raise FlattenTargetExists(dest)
            tmp = durable.temp_name(dest)
            try:
                fd = fileops.create_exclusive(tmp)
                try:
                    self._flatten_into(rec, fd)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                durable.publish_no_replace(tmp, dest)
            except BaseException as e:
                fileops.unlink_quiet(tmp)
                if isinstance(e, FileExistsError):
                    raise FlattenTargetExists(dest) from e
                if isinstance(e, OSError) and fileops.is_no_space(e):
                    raise NoSpace(f"flatten sandbox {sandbox_id}", dest, str(e)) from e
                raise
        log.info("sandbox rootfs flattened", extra=kv(sandbox=sandbox_id, image=dest))
        return dest

    def remove(self, sandbox_id: str) -> None:
        """Detach if attached and delete the sandbox's layer and record."""
        with self._exclusive(sandbox_id):
            rec = self.record(sandbox_id)
            if rec.attached:
                self._detach(rec)
            fileops.unlink_quiet(rec.layer)
            self.record_path(sandbox_id).unlink()
            durable.fsync_dir(rec.layer.parent)
        log.info("sandbox rootfs removed", extra=kv(sandbox=sandbox_id, backend=self.name))

    def users_of(self, base_image: Path) -> list[str]:
        """Sandboxes made from ``base_image``, those being created from it included."""
        with self._lock:
            return self._users_locked(base_image.resolve())

    def _users_locked(self, base: Path) -> list[str]:
        users = {sid for sid, b in self._creating.items() if b == base}
        users.update(r.sandbox_id for r in self.records() if r.base_image == base)
        return sorted(users)

    def delete_base(self, base_image: Path) -> None:
        """Delete a base image no sandbox was made from; BaseImageInUse otherwise."""
        with self._lock:
            base, _ = check_base_image(base_image)
            users = self._users_locked(base)
            if users:
                raise BaseImageInUse(base, users)
            base.unlink()
        durable.fsync_dir(base.parent)
        log.info("base image deleted", extra=kv(image=base))

    def _remove_temp_files(self, report: StaleReport) -> None:
        """Temp files of creates, record writes and flattens interrupted by a crash."""
        dirs = [self.state_dir / "images", self.state_dir / "templates", self.sandboxes_dir]
        dirs += [p for p in self.sandboxes_dir.iterdir() if p.is_dir()]
        for d in dirs:
            report.temp_files += map(str, durable.remove_stale_temps(d))

    def _mark_detached(self, rec: RootfsRecord, report: StaleReport) -> None:
        self._save(dataclasses.replace(rec, attached=False))
        report.marked_detached.append(rec.sandbox_id)
