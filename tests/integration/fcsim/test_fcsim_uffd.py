"""boot -> pause -> Full -> load (Uffd) -> resume -> pause -> Diff -> load (Uffd), checksums equal.

The fault side is the project's UFFD engine (wrennd.uffd.server.UffdServer):
the first load is served from the Full memory file, the second from the
two-generation chain Full + Diff (the Diff's data runs, found with
SEEK_DATA/SEEK_HOLE, overlaid on the Full), without merging any file.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from wrennd.uffd.engine import MapEntry
from wrennd.uffd.server import ServeResult, SnapshotMemory, UffdServer
from wrennd.vm.api import MemBackend
from wrennd.vm.errors import FirecrackerError
from wrennd_sim.fcsim.harness import SimHandle

pytestmark = [pytest.mark.uffd]

MEM_MIB = 32
MEM = MEM_MIB << 20
PAGE = 4096


def data_runs(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of a sparse file's data, by SEEK_DATA/SEEK_HOLE."""
    runs = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size, pos = os.fstat(fd).st_size, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            pos = os.lseek(fd, start, os.SEEK_HOLE)
            runs.append((start, pos - start))
    finally:
        os.close(fd)
    return runs


def chain(diff_runs: list[tuple[int, int]]) -> list[MapEntry]:
    """Source 0 (the Full) everywhere except the Diff's runs, which come from source 1."""
    entries, pos = [], 0
    for off, length in diff_runs:
        if off > pos:
            entries.append(MapEntry(pos, off - pos, pos, 0))
        entries.append(MapEntry(off, length, off, 1))
        pos = off + length
    if pos < MEM:
        entries.append(MapEntry(pos, MEM - pos, pos, 0))
    return entries


async def boot(sim: SimHandle, tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"kernel")
    await sim.client.put_machine_config(1, MEM_MIB, track_dirty_pages=True)
    await sim.client.put_boot_source(str(kernel))
    await sim.client.start()


async def load_uffd(
    sim: SimHandle, vmstate: Path, memory: SnapshotMemory, sock: Path
) -> tuple[UffdServer, asyncio.Task[ServeResult]]:
    server = UffdServer(sock, memory, prefetch=False)
    await server.start()
    serving = asyncio.ensure_future(server.serve())
    await sim.client.load_snapshot(
        str(vmstate), MemBackend("Uffd", str(sock)), track_dirty_pages=True
    )
    await asyncio.wait_for(server.ready.wait(), 10)
    return server, serving


async def test_full_and_diff_through_the_uffd_engine(launch: Any, tmp_path: Path) -> None:
    full_mem, diff_mem = tmp_path / "full.mem", tmp_path / "diff.mem"
    first: SimHandle = await launch("uf-a")
    await boot(first, tmp_path)
    await first.control.call("dirty", fraction=0.3, seed=11)
    await first.client.pause()
    booted = await first.control.checksum()
    await first.client.create_snapshot(str(tmp_path / "full.vmstate"), str(full_mem), "Full")
    await first.close()

    second: SimHandle = await launch("uf-b")
    full = SnapshotMemory(MEM, PAGE, [MapEntry(0, MEM, 0, 0)], [full_mem])
    server, serving = await load_uffd(
        second, tmp_path / "full.vmstate", full, tmp_path / "uffd-b.sock"
    )
    assert server.regions[0].size == MEM
    info = await second.control.call("info")
    assert info["backend"] == "Uffd" and info["state"] == "Paused"
    assert await second.control.checksum() == booted
    await second.client.resume()
    await second.control.call("dirty", fraction=0.05, seed=12)
    touched = await second.control.call("touch", count=500, order="random", arg=5, write=True)
    assert touched["pages"] == 500
    await second.client.pause()
    after_diff = await second.control.checksum()
    assert after_diff != booted
    await second.client.create_snapshot(str(tmp_path / "diff.vmstate"), str(diff_mem), "Diff")
    await second.close()
    result = await asyncio.wait_for(serving, 10)
    assert result.reason == "peer-closed", "fcsim's exit closes the handshake socket"
    assert result.stats.copy_bytes + result.stats.zero_bytes == MEM, "all memory was served"

    runs = data_runs(diff_mem)
    assert runs and sum(length for _, length in runs) < MEM // 4
    third: SimHandle = await launch("uf-c")
    diff = SnapshotMemory(MEM, PAGE, chain(runs), [full_mem, diff_mem])
    _, serving3 = await load_uffd(third, tmp_path / "diff.vmstate", diff, tmp_path / "uffd-c.sock")
    assert await third.control.checksum() == after_diff
    await third.client.resume()
    assert (await third.client.describe_instance())["state"] == "Running"
    await third.close()
    assert (await asyncio.wait_for(serving3, 10)).reason == "peer-closed"


async def test_uffd_load_without_a_handler_is_refused(launch: Any, tmp_path: Path) -> None:
    first: SimHandle = await launch("uf-x")
    await boot(first, tmp_path)
    await first.client.pause()
    await first.client.create_snapshot(str(tmp_path / "s"), str(tmp_path / "m"), "Full")
    await first.close()
    sim: SimHandle = await launch("uf-y")
    with pytest.raises(FirecrackerError, match="Cannot load snapshot memory"):
        await sim.client.load_snapshot(
            str(tmp_path / "s"),
            MemBackend("Uffd", str(tmp_path / "nobody.sock")),
            track_dirty_pages=False,
        )
    # Like Firecracker after a failed load, the process takes nothing more.
    with pytest.raises(FirecrackerError, match="unusable"):
        await sim.client.resume()
