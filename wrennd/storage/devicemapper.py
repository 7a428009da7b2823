"""devicemapper backend: a dm ``snapshot`` of a shared read-only base loop device per sandbox.

Per sandbox: ``sandboxes/<id>/rootfs.cow`` (sparse exception store) on its
own loop device, and ``/dev/mapper/wrenn-<id>`` = snapshot(base loop, CoW
loop).  The base image's loop device is shared and reference counted.

Bring-up order: base loop (shared) -> CoW file -> CoW loop -> dm device.
Teardown is the reverse and starts only when the VMM has closed the dm
device (dmsetup reports no holders): dm device -> CoW loop -> base loop
reference.  Pause tears down the devices and keeps the CoW file; resume
brings them up again over the same file, which holds every write ("P",
persistent exception store).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from wrennd import durable
from wrennd.log import kv
from wrennd.storage import fileops, loopdev
from wrennd.storage.backend import RootfsRecord, StaleReport, StorageBackend
from wrennd.storage.baseloops import BaseLoops, KernelLoops, LoopOps
from wrennd.storage.dmsetup import (
    DEFAULT_CHUNK_SECTORS,
    DmSetup,
    cow_file_size,
    dm_name,
    snapshot_table,
)
from wrennd.storage.errors import DeviceError
from wrennd.storage.loopdev import LoopDevice
from wrennd.storage.stale import plan_stale

log = logging.getLogger("wrennd.storage")


class DeviceMapperBackend(StorageBackend):
    name = "devicemapper"
    layer_name = "rootfs.cow"

    def __init__(
        self,
        state_dir: Path,
        dm: DmSetup | None = None,
        loops: LoopOps | None = None,
        chunk_sectors: int = DEFAULT_CHUNK_SECTORS,
    ) -> None:
        super().__init__(state_dir)
        self.dm = dm or DmSetup()
        self.loops = loops or KernelLoops()
        self.bases = BaseLoops(self.loops)
        self.chunk_sectors = chunk_sectors
        self._cow_loops: dict[str, LoopDevice] = {}

    def _make_layer(self, sandbox_id: str, base: Path, size: int, layer: Path) -> Path:
        base_loop = self.bases.acquire(base)
        try:
            fd = fileops.create_exclusive(layer, 0o600)
            try:
                os.ftruncate(fd, cow_file_size(size, self.chunk_sectors))
                os.fsync(fd)
            finally:
                os.close(fd)
            durable.fsync_dir(layer.parent)
            return self._activate(sandbox_id, base_loop, layer, size)
        except BaseException:
            self.bases.release(base)
            raise

    def _activate(self, sandbox_id: str, base_loop: LoopDevice, layer: Path, size: int) -> Path:
        """CoW loop, then the dm snapshot over base and CoW; undone if the dm step fails."""
        cow_loop = self.loops.attach(layer, read_only=False)
        try:
            table = snapshot_table(size, base_loop.devno, cow_loop.devno, self.chunk_sectors)
            drive = self.dm.create(dm_name(sandbox_id), table)
        except BaseException:
            self.loops.detach(cow_loop)
            raise
        self._cow_loops[sandbox_id] = cow_loop
        return drive

    def _attach(self, rec: RootfsRecord) -> Path:
        base_loop = self.bases.acquire(rec.base_image)
        try:
            return self._activate(rec.sandbox_id, base_loop, rec.layer, rec.base_size)
        except BaseException:
            self.bases.release(rec.base_image)
            raise

    def _detach(self, rec: RootfsRecord) -> None:
        # Raises, touching nothing, while the VMM still holds the device.
        self.dm.remove(dm_name(rec.sandbox_id))
        cow = self._cow_loops.pop(rec.sandbox_id, None)
        for device in [cow] if cow else loopdev.find_backed_by(rec.layer):
            self.loops.detach(device)
        self.bases.release(rec.base_image)

    def _flatten_into(self, rec: RootfsRecord, fd: int) -> None:
        if rec.attached:
            self._copy_drive(rec.drive, fd, rec.base_size)
            return
        drive = self._attach(rec)  # a paused sandbox: bring the merged view up briefly
        try:
            self._copy_drive(drive, fd, rec.base_size)
        finally:
            self._detach(rec)

    @staticmethod
    def _copy_drive(drive: Path, fd: int, size: int) -> None:
        src = os.open(drive, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fileops.copy_device_sparse(src, fd, size)
        finally:
            os.close(src)

    def cleanup_stale(self, running_ids: Iterable[str]) -> StaleReport:
        """Remove dm devices and state_dir loop devices of sandboxes not running; adopt the rest."""
        running = set(running_ids)
        plan = plan_stale(self.dm.tables(), loopdev.bound(), running, self.state_dir)
        report = StaleReport()
        for name in plan.remove_dm:
            try:
                self.dm.remove(name)
                report.dm_devices.append(name)
            except DeviceError as e:
                log.warning("stale dm device kept", extra=kv(device=name, error=e))
        for device in plan.detach_loops:
            self.loops.detach(device)
            report.loop_devices.append(str(device.path))
        for base, device, refs in plan.base_refs:
            self.bases.adopt(base, device, refs)
        self._cow_loops.update(plan.cow_loops)
        for rec in self.records():
            if rec.attached and rec.sandbox_id not in plan.cow_loops:
                self._mark_detached(rec, report)
        self._remove_temp_files(report)
        log.info("storage stale cleanup", extra=kv(backend=self.name, **report.__dict__))
        return report
