"""The simulated microVM: configuration, Firecracker's state rules, memory, snapshots.

Each API operation is a method taking the validated body and returning the
JSON answer (None for 204) or raising ``ApiFault``, which the server turns
into 400 with the fault_message, as Firecracker does.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

from wrennd_sim.fcsim import FIRECRACKER_VERSION
from wrennd_sim.fcsim.memory import GuestMemory, GuestMemoryError
from wrennd_sim.fcsim.snapshot import SnapshotFileError, read_vmstate, write_memory, write_vmstate
from wrennd_sim.fcsim.vmmlog import VmmLog
from wrennd_sim.uffd_peer import UffdGuest

DEFAULT_MACHINE: dict[str, Any] = {
    "vcpu_count": 1,
    "mem_size_mib": 128,
    "smt": False,
    "track_dirty_pages": False,
    "huge_pages": "None",
}


async def uffd_memory(socket_path: Path, size: int, page_size: int) -> GuestMemory:
    """The Uffd backend, as Firecracker does it: anonymous memory registered with a
    new uffd (EVENT_REMOVE negotiated), handed to the handler listening on
    ``socket_path`` with the region list; the socket stays open while fcsim lives."""
    guest = await asyncio.to_thread(UffdGuest, [size], page_size)
    try:
        await asyncio.to_thread(guest.handshake, socket_path)
    except BaseException:
        guest.close()
        raise
    return GuestMemory(guest.memories[0].address, size, page_size, "Uffd", guest.close)


class Guest(Protocol):
    """What runs "inside" the VM; fcsim's guest runner implements it."""

    async def boot(self, machine: Machine) -> None: ...

    async def freeze(self) -> None: ...

    async def thaw(self) -> None: ...

    def ctrl_alt_del(self) -> None: ...

    async def shutdown(self) -> None: ...


class ApiFault(Exception):
    """A refused request; the message is the fault_message."""


class VmState(enum.Enum):
    NOT_STARTED = "Not started"
    RUNNING = "Running"
    PAUSED = "Paused"


# Firecracker's answer to a File-backend load of a hugetlb guest's snapshot.
HUGETLB_BY_FILE = (
    "Cannot restore hugetlbfs backed snapshot by mapping the memory file. Please use uffd."
)
NOT_AFTER_START = "The requested operation is not supported after starting the microVM."
NOT_BEFORE_START = "The requested operation is not supported before starting the microVM."


def _readable(path: str, what: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ApiFault(f"Cannot open the {what} {path}: {e.strerror}") from e
    os.close(fd)


class Machine:
    """One microVM, as one Firecracker process has it."""

    def __init__(self, vm_id: str, log: VmmLog, guest: Guest | None = None) -> None:
        self.vm_id = vm_id
        self.log = log
        self.state = VmState.NOT_STARTED
        self.machine: dict[str, Any] = dict(DEFAULT_MACHINE)
        self.boot_source: dict[str, Any] | None = None
        self.drives: dict[str, dict[str, Any]] = {}
        self.network_interfaces: dict[str, dict[str, Any]] = {}
        self.balloon: dict[str, Any] | None = None
        self.logger: dict[str, Any] | None = None
        self.metrics_path: str | None = None
        self.memory: GuestMemory | None = None
        self.restored = False
        self.unusable: str | None = None
        # Memory operations and state changes never interleave: a pause waits
        # for the control socket's write in flight.
        self.lock = asyncio.Lock()
        self.guest = guest
        self.guest_booted = False

    # --- helpers ----------------------------------------------------------------
    def usable(self) -> None:
        if self.unusable is not None:
            raise ApiFault(f"The microVM is unusable after a failed snapshot load: {self.unusable}")

    def _pre_boot(self) -> None:
        if self.state is not VmState.NOT_STARTED or self.restored:
            raise ApiFault(NOT_AFTER_START)

    def _post_boot(self) -> None:
        if self.state is VmState.NOT_STARTED:
            raise ApiFault(NOT_BEFORE_START)

    def _configured(self) -> bool:
        """Anything set beyond the logger and metrics (snapshot/load refuses then)."""
        return bool(
            self.boot_source
            or self.drives
            or self.network_interfaces
            or self.balloon
            or self.machine != DEFAULT_MACHINE
        )

    @staticmethod
    def _same_id(kind: str, path_id: str, body_id: str) -> None:
        if path_id != body_id:
            raise ApiFault(f"The {kind} id from the path does not match the id from the body!")

    # --- information ------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "app_name": "fcsim",
            "id": self.vm_id,
            "state": self.state.value,
            "vmm_version": FIRECRACKER_VERSION,
        }

    def full_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "machine-config": dict(self.machine),
            "drives": list(self.drives.values()),
            "network-interfaces": list(self.network_interfaces.values()),
        }
        if self.boot_source is not None and not self.restored:
            out["boot-source"] = dict(self.boot_source)
        if self.balloon is not None:
            out["balloon"] = dict(self.balloon)
        if self.logger is not None:
            out["logger"] = dict(self.logger)
        if self.metrics_path is not None:
            out["metrics"] = {"metrics_path": self.metrics_path}
        return out

    # --- pre-boot resources -------------------------------------------------------
    def put_logger(self, body: dict[str, Any]) -> None:
        self._pre_boot()
        if "log_path" in body:
            try:
                self.log.reopen(Path(body["log_path"]))
            except OSError as e:
                raise ApiFault(f"Cannot open the log file {body['log_path']}: {e}") from e
        if "level" in body:
            self.log.set_level(body["level"])
        self.logger = dict(body)

    def put_metrics(self, body: dict[str, Any]) -> None:
        if self.metrics_path is not None:
            raise ApiFault("Reinitialization of metrics not allowed.")
        path = body["metrics_path"]
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as e:
            raise ApiFault(f"Cannot open the metrics file {path}: {e.strerror}") from e
        os.close(fd)
        self.metrics_path = path

    def put_boot_source(self, body: dict[str, Any]) -> None:
        self._pre_boot()
        _readable(body["kernel_image_path"], "kernel file")
        if "initrd_path" in body:
            _readable(body["initrd_path"], "initrd file")
        self.boot_source = dict(body)

    def put_drive(self, drive_id: str, body: dict[str, Any]) -> None:
        self._pre_boot()
        self._same_id("drive", drive_id, body["drive_id"])
        if "socket" in body:
            raise ApiFault("fcsim does not simulate vhost-user block devices")
        if "path_on_host" not in body or "is_read_only" not in body:
            raise ApiFault("A virtio-block drive needs path_on_host and is_read_only.")
        _readable(body["path_on_host"], "drive backing file")
        if body["is_root_device"] and any(
            d["is_root_device"] for k, d in self.drives.items() if k != drive_id
        ):
            raise ApiFault("A root block device already exists!")
        self.drives[drive_id] = dict(body)

    def patch_drive(self, drive_id: str, body: dict[str, Any]) -> None:
        self._post_boot()
        self._same_id("drive", drive_id, body["drive_id"])
        if drive_id not in self.drives:
            raise ApiFault(f"Drive {drive_id} not found.")
        if "path_on_host" in body:
            _readable(body["path_on_host"], "drive backing file")
        self.drives[drive_id].update(body)

    def put_network_interface(self, iface_id: str, body: dict[str, Any]) -> None:
        self._pre_boot()
        self._same_id("network interface", iface_id, body["iface_id"])
        for other_id, other in self.network_interfaces.items():
            if other_id == iface_id:
                continue
            if other["host_dev_name"] == body["host_dev_name"]:
                raise ApiFault(f"The host device {body['host_dev_name']} is already in use.")
            if "guest_mac" in body and other.get("guest_mac") == body["guest_mac"]:
                raise ApiFault(f"The guest MAC address {body['guest_mac']} is already in use.")
        self.network_interfaces[iface_id] = dict(body)

    def patch_network_interface(self, iface_id: str, body: dict[str, Any]) -> None:
        self._post_boot()
        self._same_id("network interface", iface_id, body["iface_id"])
        if iface_id not in self.network_interfaces:
            raise ApiFault(f"Network interface {iface_id} not found.")
        self.network_interfaces[iface_id].update(body)

    def put_machine_config(self, body: dict[str, Any], partial: bool) -> None:
        self._pre_boot()
        new = dict(self.machine) if partial else dict(DEFAULT_MACHINE)
        new.update(body)
        if new["mem_size_mib"] <= 0:
            raise ApiFault("The memory size (MiB) is invalid.")
        if new.get("smt") and new["vcpu_count"] > 1 and new["vcpu_count"] % 2:
            raise ApiFault("The vCPU number is invalid! The vCPU number can only be 1 or even.")
        if new.get("huge_pages") == "2M" and new["mem_size_mib"] % 2:
            raise ApiFault("The memory size (MiB) must be a multiple of 2 with 2M huge pages.")
        self.machine = new

    def put_balloon(self, body: dict[str, Any]) -> None:
        self._pre_boot()
        if body["amount_mib"] > self.machine["mem_size_mib"]:
            raise ApiFault("Amount of pages requested cannot be greater than the guest memory.")
        self.balloon = dict(body)

    def patch_balloon(self, body: dict[str, Any]) -> None:
        self._post_boot()
        if self.balloon is None:
            raise ApiFault("No balloon device found.")
        if body["amount_mib"] > self.machine["mem_size_mib"]:
            raise ApiFault("Amount of pages requested cannot be greater than the guest memory.")
        self.balloon.update(body)

    def get_balloon(self) -> dict[str, Any]:
        if self.balloon is None:
            raise ApiFault("No balloon device found.")
        return dict(self.balloon)

    # --- lifecycle ------------------------------------------------------------------
    async def action(self, body: dict[str, Any]) -> None:
        kind = body["action_type"]
        if kind == "InstanceStart":
            await self._instance_start()
        elif kind == "FlushMetrics":
            self._flush_metrics()
        else:  # SendCtrlAltDel
            self._post_boot()
            self.log.info("SendCtrlAltDel: guest asked to shut down")
            if self.guest is not None and self.guest_booted:
                self.guest.ctrl_alt_del()

    async def _instance_start(self) -> None:
        self._pre_boot()
        if self.boot_source is None:
            raise ApiFault("Cannot start microvm without kernel configuration.")
        try:
            self.memory = GuestMemory.anonymous(
                self.machine["mem_size_mib"], self.machine["huge_pages"] == "2M"
            )
        except GuestMemoryError as e:
            raise ApiFault(f"Cannot create guest memory: {e}") from e
        self.memory.track_dirty = bool(self.machine["track_dirty_pages"])
        try:
            await self._run()
        except ApiFault:
            self.memory.close()
            self.memory = None
            raise
        self.log.info("microVM started")

    async def _run(self) -> None:
        """Enter Running: boot the guest the first time, thaw it afterwards."""
        if self.guest is not None:
            try:
                if not self.guest_booted:
                    await self.guest.boot(self)
                    self.guest_booted = True
                else:
                    await self.guest.thaw()
            except Exception as e:  # any boot failure is the request's answer, not a crash
                raise ApiFault(f"Cannot run the guest: {e}") from e
        self.state = VmState.RUNNING

    def _flush_metrics(self) -> None:
        if self.metrics_path is None:
            raise ApiFault("The metrics system is not initialized.")
        line = {
            "utc_timestamp_ms": int(time.time() * 1000),
            "fcsim": {
                "state": self.state.value,
                "dirty_pages": self.memory.dirty_count() if self.memory else 0,
            },
        }
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(line) + "\n")

    async def patch_vm(self, body: dict[str, Any]) -> None:
        self._post_boot()
        if body["state"] == "Paused":
            if self.state is VmState.RUNNING and self.guest is not None and self.guest_booted:
                try:
                    await self.guest.freeze()
                except OSError as e:  # the guest keeps running: an answer, not a crash
                    raise ApiFault(f"Cannot pause the microVM: {e}") from e
            self.state = VmState.PAUSED
            self.log.info("microVM paused")
        else:
            if self.state is VmState.PAUSED:
                await self._run()
            self.log.info("microVM resumed")

    # --- snapshots --------------------------------------------------------------------
    async def create_snapshot(self, body: dict[str, Any]) -> None:
        if self.state is not VmState.PAUSED:
            raise ApiFault("Cannot create a snapshot: the microVM must be paused first.")
        assert self.memory is not None
        diff = body.get("snapshot_type", "Full") == "Diff"
        if diff and not self.memory.track_dirty:
            raise ApiFault(
                "Diff snapshots are not allowed on microVMs with dirty page tracking disabled."
            )
        mem, mem_path = self.memory, Path(body["mem_file_path"])
        state = self._vmstate()
        try:
            written = await asyncio.to_thread(write_memory, mem, mem_path, diff)
            await asyncio.to_thread(write_vmstate, Path(body["snapshot_path"]), state)
        except SnapshotFileError as e:
            raise ApiFault(f"Cannot create snapshot: {e}") from e
        self.log.info(f"snapshot created: {'Diff' if diff else 'Full'}, {written} bytes of memory")

    def _vmstate(self) -> dict[str, Any]:
        assert self.memory is not None
        return {
            "firecracker_version": FIRECRACKER_VERSION,
            "vm_id": self.vm_id,
            "machine_config": copy.deepcopy(self.machine),
            "boot_source": copy.deepcopy(self.boot_source),
            "drives": copy.deepcopy(list(self.drives.values())),
            "network_interfaces": copy.deepcopy(list(self.network_interfaces.values())),
            "balloon": copy.deepcopy(self.balloon),
            "mem_size": self.memory.size,
            "page_size": self.memory.page_size,
        }

    async def load_snapshot(self, body: dict[str, Any]) -> None:
        if self.state is not VmState.NOT_STARTED or self.restored or self._configured():
            raise ApiFault(
                "Loading a microVM snapshot not allowed after configuring boot-specific"
                " resources or starting the microVM."
            )
        if ("mem_backend" in body) == ("mem_file_path" in body):
            raise ApiFault("Exactly one of mem_backend and mem_file_path must be given.")
        if "track_dirty_pages" in body and "enable_diff_snapshots" in body:
            raise ApiFault("Give track_dirty_pages or enable_diff_snapshots, not both.")
        try:
            await self._restore(body)
        except ApiFault as e:
            # Like Firecracker, a failed load leaves nothing to resume.
            self.unusable = str(e)
            raise

    async def _restore(self, body: dict[str, Any]) -> None:
        try:
            state = read_vmstate(Path(body["snapshot_path"]))
        except SnapshotFileError as e:
            raise ApiFault(f"Cannot load snapshot: {e}") from e
        ifaces = {i["iface_id"]: dict(i) for i in state.get("network_interfaces", [])}
        for override in body.get("network_overrides", []):
            if override["iface_id"] not in ifaces:
                raise ApiFault(
                    f"Cannot load snapshot: network override for unknown interface"
                    f" {override['iface_id']}"
                )
            ifaces[override["iface_id"]]["host_dev_name"] = override["host_dev_name"]
        backend = body.get("mem_backend") or {
            "backend_type": "File",
            "backend_path": body["mem_file_path"],
        }
        try:
            self.memory = await self._map_snapshot_memory(backend, state)
        except (GuestMemoryError, OSError) as e:
            raise ApiFault(f"Cannot load snapshot memory: {e}") from e
        self.memory.track_dirty = bool(
            body.get("track_dirty_pages", body.get("enable_diff_snapshots", False))
        )
        self.machine = {**state["machine_config"], "track_dirty_pages": self.memory.track_dirty}
        self.boot_source = state.get("boot_source")
        self.drives = {d["drive_id"]: d for d in state.get("drives", [])}
        self.network_interfaces = ifaces
        self.balloon = state.get("balloon")
        self.restored = True
        self.state = VmState.PAUSED
        self.log.info(f"snapshot loaded with the {backend['backend_type']} backend")
        if body.get("resume_vm"):
            # The guest is rebooted from the restored rootfs when it first runs.
            await self._run()

    async def _map_snapshot_memory(
        self, backend: dict[str, str], state: dict[str, Any]
    ) -> GuestMemory:
        size, page_size = state["mem_size"], state["page_size"]
        if backend["backend_type"] == "File":
            if state["machine_config"].get("huge_pages", "None") != "None":
                raise ApiFault(HUGETLB_BY_FILE)
            return await asyncio.to_thread(
                GuestMemory.from_file, Path(backend["backend_path"]), size, page_size
            )
        return await uffd_memory(Path(backend["backend_path"]), size, page_size)

    async def close(self) -> None:
        if self.guest is not None and self.guest_booted:
            await self.guest.shutdown()
            self.guest_booted = False

    def close_memory(self) -> None:
        if self.memory is not None:
            self.memory.close()
            self.memory = None
