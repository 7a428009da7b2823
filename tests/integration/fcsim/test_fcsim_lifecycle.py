"""The driver runs fcsim through boot, pause, Full and Diff snapshots and loads.

Memory content is compared through the control socket's checksum at each step.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from wrennd.vm.api import MemBackend
from wrennd_sim.fcsim.control import ControlError
from wrennd_sim.fcsim.harness import SimHandle as Sim

MEM_MIB = 64
PAGE = 4096


async def boot(sim: Sim, tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF not a real kernel: fcsim never runs it")
    c = sim.client
    await c.put_logger(str(sim.proc.files.log_file), "Debug")
    await c.put_metrics(str(sim.proc.files.metrics_file))
    await c.put_machine_config(1, MEM_MIB, track_dirty_pages=True)
    await c.put_boot_source(str(kernel), "console=ttyS0 reboot=k panic=1")
    await c.start()


def data_ranges(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of the allocated runs of a sparse file, by SEEK_DATA/SEEK_HOLE."""
    runs = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            runs.append((start, end - start))
            pos = end
    finally:
        os.close(fd)
    return runs


def overlay(diff: Path, base: Path, runs: list[tuple[int, int]]) -> None:
    with open(diff, "rb") as src, open(base, "r+b") as dst:
        for offset, length in runs:
            src.seek(offset)
            dst.seek(offset)
            dst.write(src.read(length))


async def test_boot_full_load_resume_diff_load(launch: Any, tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    snap.mkdir()
    first = await launch("vm-a")
    await boot(first, tmp_path)
    assert (await first.client.describe_instance())["state"] == "Running"
    await first.control.call("dirty", fraction=0.25, seed=1)
    await first.client.pause()
    booted_sum = await first.control.checksum()

    await first.client.create_snapshot(str(snap / "full.vmstate"), str(snap / "full.mem"), "Full")
    assert (snap / "full.mem").stat().st_size == MEM_MIB << 20
    await first.close()

    # Load the Full snapshot into a fresh process; memory must be the same.
    second = await launch("vm-b")
    await second.client.load_snapshot(
        str(snap / "full.vmstate"),
        MemBackend("File", str(snap / "full.mem")),
        track_dirty_pages=True,
    )
    assert (await second.client.describe_instance())["state"] == "Paused"
    assert await second.control.checksum() == booted_sum
    info = await second.control.call("info")
    assert info["backend"] == "File" and info["dirty_pages"] == 0

    await second.client.resume()
    written = (await second.control.call("dirty", fraction=0.05, seed=2))["pages"]
    assert written > 0
    await second.client.pause()
    diff_sum = await second.control.checksum()
    assert diff_sum != booted_sum

    # A Diff into a fresh file holds exactly the dirty pages, at their offsets.
    await second.client.create_snapshot(str(snap / "diff.vmstate"), str(snap / "diff.mem"), "Diff")
    runs = data_ranges(snap / "diff.mem")
    assert sum(length for _, length in runs) == written * PAGE
    # A Diff into the base memfile (right size) is merged in place, as Firecracker does.
    merged = snap / "merged.mem"
    shutil.copyfile(snap / "full.mem", merged)
    await second.client.create_snapshot(str(snap / "merged.vmstate"), str(merged), "Diff")
    # Nothing was dirtied since the last snapshot: the merge wrote no page.
    assert merged.read_bytes() == (snap / "full.mem").read_bytes()
    await second.close()

    # Overlay the first Diff's pages on the base, as the daemon's chain does.
    overlay(snap / "diff.mem", merged, runs)
    third = await launch("vm-c")
    await third.client.load_snapshot(
        str(snap / "diff.vmstate"),
        MemBackend("File", str(merged)),
        track_dirty_pages=True,
        resume_vm=True,
    )
    assert (await third.client.describe_instance())["state"] == "Running"
    assert await third.control.checksum() == diff_sum


async def test_diff_merges_into_an_existing_memfile(launch: Any, tmp_path: Path) -> None:
    sim = await launch("vm-m")
    await boot(sim, tmp_path)
    await sim.client.pause()
    mem = tmp_path / "gen.mem"
    await sim.client.create_snapshot(str(tmp_path / "gen.vmstate"), str(mem), "Full")
    await sim.client.resume()
    await sim.control.call("dirty", fraction=0.1, seed=9)
    await sim.client.pause()
    want = await sim.control.checksum()
    await sim.client.create_snapshot(str(tmp_path / "gen2.vmstate"), str(mem), "Diff")
    await sim.close()
    again = await launch("vm-n")
    await again.client.load_snapshot(
        str(tmp_path / "gen2.vmstate"), MemBackend("File", str(mem)), track_dirty_pages=False
    )
    assert await again.control.checksum() == want


async def test_guest_writes_need_a_running_vm(launch: Any, tmp_path: Path) -> None:
    sim = await launch("vm-w")
    with pytest.raises(ControlError, match="no memory"):
        await sim.control.checksum()
    await boot(sim, tmp_path)
    await sim.client.pause()
    with pytest.raises(ControlError, match="not running"):
        await sim.control.call("dirty", fraction=0.1, seed=1)
    await sim.client.resume()
    assert (await sim.control.call("write", offset=4096, data="aGVsbG8="))["written"] == 5
    assert (await sim.control.call("read", offset=4096, length=5))["data"] == "aGVsbG8="
    touched = await sim.control.call("touch", count=100, order="strided", arg=2, write=True)
    assert touched["pages"] == 100
    assert 0 < touched["p50_ns"] <= touched["p99_ns"] <= touched["max_ns"]
    with pytest.raises(ControlError, match="unknown touch pattern"):
        await sim.control.call("touch", count=1, order="zigzag")
    assert (await sim.control.call("info"))["dirty_pages"] == 101
