"""Backend selection: probe each backend for real and take the configured one or, for
``auto``, the first that works (devicemapper, reflink, copy), logging which and why."""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wrennd import durable, features
from wrennd.log import kv
from wrennd.storage import fileops, loopdev
from wrennd.storage.backend import StorageBackend
from wrennd.storage.devicemapper import DeviceMapperBackend
from wrennd.storage.dmsetup import DmSetup
from wrennd.storage.errors import BackendUnavailable, DeviceError
from wrennd.storage.filebackends import CopyBackend, ReflinkBackend, reflink_hint

log = logging.getLogger("wrennd.storage")

AUTO_ORDER = ("devicemapper", "reflink", "copy")


@dataclass(frozen=True)
class Probe:
    ok: bool
    reason: str


def _kernel_has_module(name: str) -> bool:
    """Loaded, built in, or installed as a module the kernel can autoload."""
    if Path(f"/sys/module/{name.replace('-', '_')}").exists():
        return True
    moddir = Path("/lib/modules") / platform.release()
    for index in ("modules.builtin", "modules.dep"):
        try:
            text = (moddir / index).read_text()
        except OSError:
            continue
        if f"/{name}.ko" in text:
            return True
    return False


def probe_devicemapper(state_dir: Path, dm: DmSetup | None = None) -> Probe:
    feature = features.device_mapper()
    if not feature.available:
        return Probe(False, feature.reason)
    if not loopdev.LOOP_CONTROL.exists():
        return Probe(False, f"no loop device support ({loopdev.LOOP_CONTROL} is missing)")
    try:
        targets = (dm or DmSetup()).targets()
    except DeviceError as e:
        return Probe(False, str(e))
    if "snapshot" not in targets and not _kernel_has_module("dm-snapshot"):
        return Probe(False, "the kernel has no dm snapshot target (dm-snapshot)")
    return Probe(True, "device-mapper with the snapshot target and loop devices are available")


def _scratch(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return durable.temp_name(directory / "storage-probe")


def probe_reflink(state_dir: Path) -> Probe:
    """FICLONE from images/ into sandboxes/, the way create uses it."""
    src, dst = _scratch(state_dir / "images"), _scratch(state_dir / "sandboxes")
    try:
        sfd = fileops.create_exclusive(src)
        try:
            os.write(sfd, b"\xa5" * 4096)
            dfd = fileops.create_exclusive(dst)
            try:
                fileops.reflink(sfd, dfd)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
    except OSError as e:
        return Probe(False, f"FICLONE from images/ to sandboxes/: {e.strerror} ({reflink_hint(e)})")
    finally:
        fileops.unlink_quiet(src)
        fileops.unlink_quiet(dst)
    return Probe(True, "FICLONE works from images/ to sandboxes/")


def probe_copy(state_dir: Path) -> Probe:
    path = _scratch(state_dir / "sandboxes")
    try:
        os.close(fileops.create_exclusive(path))
    except OSError as e:
        return Probe(False, f"cannot create files in {path.parent}: {e.strerror}")
    finally:
        fileops.unlink_quiet(path)
    return Probe(True, "sparse copy (SEEK_DATA/SEEK_HOLE + copy_file_range) works everywhere")


PROBES: dict[str, Callable[[Path], Probe]] = {
    "devicemapper": probe_devicemapper,
    "reflink": probe_reflink,
    "copy": probe_copy,
}
BACKENDS: dict[str, Callable[[Path], StorageBackend]] = {
    "devicemapper": DeviceMapperBackend,
    "reflink": ReflinkBackend,
    "copy": CopyBackend,
}


def choose_backend(kind: str, state_dir: Path) -> StorageBackend:
    """The backend named by ``kind`` (raising BackendUnavailable if it does not work here),
    or for ``auto`` the first of AUTO_ORDER that does.  Blocking: probes touch the disk."""
    if kind != "auto":
        if kind not in PROBES:
            raise BackendUnavailable(kind, f"unknown backend; expected auto or {AUTO_ORDER}")
        probe = PROBES[kind](state_dir)
        if not probe.ok:
            raise BackendUnavailable(kind, probe.reason)
        log.info("storage backend", extra=kv(backend=kind, chosen_by="config", why=probe.reason))
        return BACKENDS[kind](state_dir)
    rejected: dict[str, str] = {}
    for name in AUTO_ORDER:
        probe = PROBES[name](state_dir)
        if probe.ok:
            log.info(
                "storage backend",
                extra=kv(backend=name, chosen_by="auto", why=probe.reason, **_skipped(rejected)),
            )
            return BACKENDS[name](state_dir)
        rejected[name] = probe.reason
    raise BackendUnavailable("auto", "; ".join(f"{k}: {v}" for k, v in rejected.items()))


def _skipped(rejected: dict[str, str]) -> dict[str, str]:
    return {f"not_{name}": reason for name, reason in rejected.items()}
