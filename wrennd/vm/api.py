"""Request builders for the Firecracker API, one per operation the daemon uses.

Each builder returns an ``ApiCall`` (method, path, JSON body) and sends only
fields the Firecracker version it is bound to accepts: Firecracker refuses
unknown fields, so a field added in a later release must not reach an older
VMM. Where a newer field has an older spelling the builder uses the older one;
where it has none, ``UnsupportedByVersion`` says which field and version.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from wrennd.vm.errors import UnsupportedByVersion

Version = tuple[int, int, int]

# Oldest Firecracker this driver speaks to: huge_pages in machine-config and
# the Uffd memory backend are both there from 1.7 on.
MIN_VERSION: Version = (1, 7, 0)
# Fields added after MIN_VERSION, with the release that first accepts them
# (from Firecracker's changelog; an entry set too late only costs a refusal).
FIELD_SINCE: dict[str, Version] = {
    "SnapshotLoadParams.track_dirty_pages": (1, 10, 0),
    "SnapshotLoadParams.network_overrides": (1, 12, 0),
}

LogLevel = Literal["Error", "Warning", "Info", "Debug", "Trace", "Off"]
CacheType = Literal["Unsafe", "Writeback"]
IoEngine = Literal["Sync", "Async"]
HugePages = Literal["None", "2M"]
ActionType = Literal["InstanceStart", "FlushMetrics", "SendCtrlAltDel"]
SnapshotType = Literal["Full", "Diff"]
BackendType = Literal["File", "Uffd"]

_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


def parse_version(text: str) -> Version:
    """``"1.16.1"``, ``"v1.16.1-dev"`` -> (1, 16, 1)."""
    m = _VERSION_RE.match(text.strip())
    if m is None:
        raise ValueError(f"not a Firecracker version: {text!r}")
    return (int(m[1]), int(m[2]), int(m[3]))


@dataclass(frozen=True)
class ApiCall:
    method: str
    path: str
    body: dict[str, Any] | None = None


@dataclass(frozen=True)
class MemBackend:
    backend_type: BackendType
    backend_path: str


def _without_none(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _check_id(kind: str, value: str) -> str:
    # Firecracker ids are path segments: keep them to what it accepts.
    if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", value):
        raise ValueError(f"{kind} {value!r}: expected 1-64 characters of [A-Za-z0-9_]")
    return value


class Requests:
    """Builders bound to one Firecracker version."""

    def __init__(self, version: Version) -> None:
        if version < MIN_VERSION:
            raise UnsupportedByVersion("this driver", MIN_VERSION, version)
        self.version = version

    def accepts(self, field: str) -> bool:
        return self.version >= FIELD_SINCE.get(field, MIN_VERSION)

    def _require(self, field: str) -> None:
        if not self.accepts(field):
            raise UnsupportedByVersion(field, FIELD_SINCE[field], self.version)

    # --- information -------------------------------------------------------
    def describe_instance(self) -> ApiCall:
        return ApiCall("GET", "/")

    def version_info(self) -> ApiCall:
        return ApiCall("GET", "/version")

    def get_machine_config(self) -> ApiCall:
        return ApiCall("GET", "/machine-config")

    # --- pre-boot resources --------------------------------------------------
    def logger(
        self,
        log_path: str,
        level: LogLevel = "Info",
        show_level: bool = True,
        show_log_origin: bool = False,
    ) -> ApiCall:
        body = _without_none(
            log_path=log_path, level=level, show_level=show_level, show_log_origin=show_log_origin
        )
        return ApiCall("PUT", "/logger", body)

    def metrics(self, metrics_path: str) -> ApiCall:
        return ApiCall("PUT", "/metrics", {"metrics_path": metrics_path})

    def boot_source(
        self, kernel_image_path: str, boot_args: str | None = None, initrd_path: str | None = None
    ) -> ApiCall:
        body = _without_none(
            kernel_image_path=kernel_image_path, boot_args=boot_args, initrd_path=initrd_path
        )
        return ApiCall("PUT", "/boot-source", body)

    def drive(
        self,
        drive_id: str,
        path_on_host: str,
        *,
        is_root_device: bool,
        is_read_only: bool = False,
        cache_type: CacheType | None = None,
        io_engine: IoEngine | None = None,
    ) -> ApiCall:
        body = _without_none(
            drive_id=_check_id("drive_id", drive_id),
            path_on_host=path_on_host,
            is_root_device=is_root_device,
            is_read_only=is_read_only,
            cache_type=cache_type,
            io_engine=io_engine,
        )
        return ApiCall("PUT", f"/drives/{drive_id}", body)

    def patch_drive(self, drive_id: str, path_on_host: str) -> ApiCall:
        """Point a drive at another backing file (after boot or a snapshot load)."""
        body = {"drive_id": _check_id("drive_id", drive_id), "path_on_host": path_on_host}
        return ApiCall("PATCH", f"/drives/{drive_id}", body)

    def network_interface(
        self, iface_id: str, host_dev_name: str, guest_mac: str | None = None
    ) -> ApiCall:
        body = _without_none(
            iface_id=_check_id("iface_id", iface_id),
            host_dev_name=host_dev_name,
            guest_mac=guest_mac,
        )
        return ApiCall("PUT", f"/network-interfaces/{iface_id}", body)

    def machine_config(
        self,
        vcpu_count: int,
        mem_size_mib: int,
        *,
        smt: bool | None = None,
        track_dirty_pages: bool | None = None,
        huge_pages: HugePages | None = None,
    ) -> ApiCall:
        if not 1 <= vcpu_count <= 32:
            raise ValueError(f"vcpu_count {vcpu_count}: expected 1..32")
        if mem_size_mib <= 0:
            raise ValueError(f"mem_size_mib {mem_size_mib}: expected a positive size")
        body = _without_none(
            vcpu_count=vcpu_count,
            mem_size_mib=mem_size_mib,
            smt=smt,
            track_dirty_pages=track_dirty_pages,
            huge_pages=huge_pages,
        )
        return ApiCall("PUT", "/machine-config", body)

    def put_balloon(
        self, amount_mib: int, deflate_on_oom: bool, stats_polling_interval_s: int | None = None
    ) -> ApiCall:
        body = _without_none(
            amount_mib=amount_mib,
            deflate_on_oom=deflate_on_oom,
            stats_polling_interval_s=stats_polling_interval_s,
        )
        return ApiCall("PUT", "/balloon", body)

    def patch_balloon(self, amount_mib: int) -> ApiCall:
        return ApiCall("PATCH", "/balloon", {"amount_mib": amount_mib})

    def get_balloon(self) -> ApiCall:
        return ApiCall("GET", "/balloon")

    # --- running VM -----------------------------------------------------------
    def action(self, action_type: ActionType) -> ApiCall:
        return ApiCall("PUT", "/actions", {"action_type": action_type})

    def vm_state(self, state: Literal["Paused", "Resumed"]) -> ApiCall:
        return ApiCall("PATCH", "/vm", {"state": state})

    def snapshot_create(
        self, snapshot_path: str, mem_file_path: str, snapshot_type: SnapshotType = "Full"
    ) -> ApiCall:
        body = {
            "snapshot_path": snapshot_path,
            "mem_file_path": mem_file_path,
            "snapshot_type": snapshot_type,
        }
        return ApiCall("PUT", "/snapshot/create", body)

    def snapshot_load(
        self,
        snapshot_path: str,
        backend: MemBackend,
        *,
        track_dirty_pages: bool,
        resume_vm: bool = False,
        network_overrides: Mapping[str, str] | None = None,
    ) -> ApiCall:
        """Dirty tracking is not stored in the snapshot: say it on every load."""
        body: dict[str, Any] = {
            "snapshot_path": snapshot_path,
            "mem_backend": {
                "backend_type": backend.backend_type,
                "backend_path": backend.backend_path,
            },
            "resume_vm": resume_vm,
        }
        if self.accepts("SnapshotLoadParams.track_dirty_pages"):
            body["track_dirty_pages"] = track_dirty_pages
        else:
            body["enable_diff_snapshots"] = track_dirty_pages
        if network_overrides:
            self._require("SnapshotLoadParams.network_overrides")
            body["network_overrides"] = [
                {"iface_id": iface, "host_dev_name": dev}
                for iface, dev in sorted(network_overrides.items())
            ]
        return ApiCall("PUT", "/snapshot/load", body)
