"""fcsim keeps and reports configuration as Firecracker does; the driver sees a dead VMM."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from wrennd.vm.api import ApiCall, MemBackend
from wrennd.vm.errors import FirecrackerError, VmmExited
from wrennd.vm.launcher import FirecrackerArgs, VmmFiles
from wrennd.vm.vmm import Vmm
from wrennd_sim.fcsim.harness import SimHandle, require_fcsim


async def snapshot_with_nic(sim: SimHandle, tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"kernel")
    c = sim.client
    await c.put_machine_config(2, 16, track_dirty_pages=False)
    await c.put_boot_source(str(kernel), "console=ttyS0")
    await c.put_network_interface("eth0", "tap0", "06:00:AC:10:00:02")
    await c.put_balloon(4, deflate_on_oom=True)
    assert (await c.call(c.requests.get_balloon()))["amount_mib"] == 4
    await c.start()
    await c.patch_balloon(8)
    await c.pause()
    await c.create_snapshot(str(tmp_path / "vmstate"), str(tmp_path / "mem"), "Full")


async def test_load_applies_network_overrides(launch: Any, tmp_path: Path) -> None:
    first: SimHandle = await launch("cfg-a")
    await snapshot_with_nic(first, tmp_path)
    config = await first.client.call(ApiCall("GET", "/vm/config"))
    assert config["machine-config"]["vcpu_count"] == 2
    assert config["balloon"]["amount_mib"] == 8
    await first.close()

    second: SimHandle = await launch("cfg-b")
    await second.client.load_snapshot(
        str(tmp_path / "vmstate"),
        MemBackend("File", str(tmp_path / "mem")),
        track_dirty_pages=True,
        resume_vm=True,
        network_overrides={"eth0": "tap7"},
    )
    config = await second.client.call(ApiCall("GET", "/vm/config"))
    assert config["network-interfaces"][0]["host_dev_name"] == "tap7"
    assert config["machine-config"]["track_dirty_pages"] is True, "taken from the load"
    assert "boot-source" not in config, "a restored VM reports no boot source"
    assert (await second.client.describe_instance())["state"] == "Running"


async def test_override_of_an_unknown_interface_is_refused(launch: Any, tmp_path: Path) -> None:
    first: SimHandle = await launch("cfg-c")
    await snapshot_with_nic(first, tmp_path)
    await first.close()
    second: SimHandle = await launch("cfg-d")
    with pytest.raises(FirecrackerError, match="unknown interface eth9"):
        await second.client.load_snapshot(
            str(tmp_path / "vmstate"),
            MemBackend("File", str(tmp_path / "mem")),
            track_dirty_pages=False,
            network_overrides={"eth9": "tap7"},
        )


async def test_a_vmm_that_dies_is_reported_with_its_exit(tmp_path: Path) -> None:
    files = VmmFiles.under(tmp_path / "vm")
    vmm = await Vmm.start(FirecrackerArgs(require_fcsim(), "dies", files).argv(), files)
    os.kill(vmm.proc.pid, signal.SIGKILL)
    await vmm.proc.wait()
    with pytest.raises(VmmExited, match="killed by SIGKILL"):
        await vmm.checked(vmm.client.describe_instance)
    assert await vmm.close() == -signal.SIGKILL
