"""fcsim refuses what Firecracker refuses, with 400 and a fault_message: each case."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from wrennd.vm.api import ApiCall
from wrennd.vm.errors import FirecrackerError
from wrennd_sim.fcsim.harness import SimHandle

BAND = {"size": 1, "refill_time": 1}


async def configure(sim: SimHandle, tmp: Path, *, dirty: bool = True) -> None:
    kernel = tmp / "vmlinux"
    kernel.write_bytes(b"kernel")
    await sim.client.put_machine_config(1, 16, track_dirty_pages=dirty)
    await sim.client.put_boot_source(str(kernel))


async def started(sim: SimHandle, tmp: Path, *, dirty: bool = True) -> None:
    await configure(sim, tmp, dirty=dirty)
    await sim.client.start()


async def fresh(sim: SimHandle, tmp: Path) -> None:
    return None


async def failed_load(sim: SimHandle, tmp: Path) -> None:
    with pytest.raises(FirecrackerError, match="Cannot load snapshot"):
        await sim.client.call(
            ApiCall(
                "PUT",
                "/snapshot/load",
                {"snapshot_path": str(tmp / "missing"), "mem_file_path": str(tmp / "m")},
            )
        )


async def paused_untracked(sim: SimHandle, tmp: Path) -> None:
    await started(sim, tmp, dirty=False)
    await sim.client.pause()


CASES: list[tuple[str, Any, str, str, Any, str]] = [
    # (id, stage, method, path, body, expected fault_message fragment)
    ("unknown-path", fresh, "GET", "/nope", None, "Invalid request method and/or path"),
    ("wrong-method", fresh, "DELETE", "/vm", None, "Invalid request method and/or path"),
    ("bad-type", fresh, "PUT", "/machine-config",
     {"vcpu_count": "two", "mem_size_mib": 128}, "'two' is not of type 'integer'"),
    ("missing-required", fresh, "PUT", "/boot-source", {},
     "'kernel_image_path' is a required property"),
    ("unknown-field", fresh, "PUT", "/machine-config",
     {"vcpu_count": 1, "mem_size_mib": 128, "turbo": True}, "'turbo' was unexpected"),
    ("unknown-nested-field", fresh, "PUT", "/drives/rootfs",
     {"drive_id": "rootfs", "is_root_device": True, "path_on_host": "/dev/null",
      "is_read_only": True, "rate_limiter": {"bandwidth": {**BAND, "burst": 1}}},
     "'burst' was unexpected"),
    ("out-of-range", fresh, "PUT", "/machine-config",
     {"vcpu_count": 33, "mem_size_mib": 128}, "33 is greater than the maximum of 32"),
    ("bad-enum", fresh, "PATCH", "/vm", {"state": "Sleeping"}, "'Sleeping' is not one of"),
    ("body-required", fresh, "PUT", "/actions", None, "a JSON body is required"),
    ("id-mismatch", fresh, "PUT", "/drives/a",
     {"drive_id": "b", "is_root_device": False, "path_on_host": "/dev/null",
      "is_read_only": True}, "does not match the id from the body"),
    ("missing-kernel-file", fresh, "PUT", "/boot-source",
     {"kernel_image_path": "/nonexistent/vmlinux"}, "Cannot open the kernel file"),
    ("pause-before-start", fresh, "PATCH", "/vm", {"state": "Paused"},
     "not supported before starting"),
    ("snapshot-before-start", fresh, "PUT", "/snapshot/create",
     {"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}, "must be paused"),
    ("start-without-kernel", fresh, "PUT", "/actions", {"action_type": "InstanceStart"},
     "without kernel configuration"),
    ("flush-without-metrics", fresh, "PUT", "/actions", {"action_type": "FlushMetrics"},
     "metrics system is not initialized"),
    ("not-simulated", fresh, "PUT", "/vsock", {"guest_cid": 3, "uds_path": "/tmp/v"},
     "fcsim does not simulate PUT /vsock"),
    ("load-two-backends", fresh, "PUT", "/snapshot/load",
     {"snapshot_path": "/s", "mem_file_path": "/m",
      "mem_backend": {"backend_type": "File", "backend_path": "/m"}}, "Exactly one of"),
    ("load-after-config", configure, "PUT", "/snapshot/load",
     {"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}},
     "not allowed after configuring"),
    ("unusable-after-failed-load", failed_load, "PUT", "/machine-config",
     {"vcpu_count": 1, "mem_size_mib": 16}, "unusable after a failed snapshot load"),
    ("boot-source-after-start", started, "PUT", "/boot-source",
     {"kernel_image_path": "/dev/null"}, "not supported after starting"),
    ("machine-config-after-start", started, "PATCH", "/machine-config",
     {"vcpu_count": 1, "mem_size_mib": 16}, "not supported after starting"),
    ("start-twice", started, "PUT", "/actions", {"action_type": "InstanceStart"},
     "not supported after starting"),
    ("snapshot-while-running", started, "PUT", "/snapshot/create",
     {"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}, "must be paused"),
    ("load-after-start", started, "PUT", "/snapshot/load",
     {"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}},
     "not allowed after configuring"),
    ("diff-without-tracking", paused_untracked, "PUT", "/snapshot/create",
     {"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m", "snapshot_type": "Diff"},
     "dirty page tracking disabled"),
    ("patch-balloon-without-device", started, "PATCH", "/balloon", {"amount_mib": 1},
     "No balloon device found"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("stage", "method", "path", "body", "needle"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
async def test_refused_with_400_and_fault_message(
    launch: Any, tmp_path: Path, stage: Any, method: str, path: str, body: Any, needle: str
) -> None:
    sim: SimHandle = await launch("vm")
    await stage(sim, tmp_path)
    with pytest.raises(FirecrackerError) as err:
        await sim.client.call(ApiCall(method, path, body))
    assert err.value.status == 400
    assert needle in err.value.fault_message
    # A refusal changes nothing: the VMM still answers.
    assert (await sim.client.describe_instance())["id"] == "vm"


async def test_malformed_json_is_refused(launch: Any) -> None:
    sim: SimHandle = await launch("vm")
    connector = aiohttp.UnixConnector(path=str(sim.proc.files.api_socket))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.put("http://localhost/machine-config", data=b'{"vcpu_count": 1,') as resp,
    ):
        assert resp.status == 400
        assert "deserializing" in (await resp.json())["fault_message"]
