"""UffdServer against the real kernel uffd: a child process registers its
memory and touches it (uffd_child.py), this process serves it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from wrennd.uffd.server import ServeStopped, UffdServer

pytestmark = pytest.mark.uffd
MiB = 1 << 20
P = 4096
Factory = Callable[..., Any]


async def started(tmp_path: Path, snap: Any, **kw: object) -> UffdServer:
    server = UffdServer(tmp_path / "uffd.sock", snap.memory, **kw)  # type: ignore[arg-type]
    await server.start()
    return server


@pytest.mark.parametrize("batch_bytes", [P, 64 * 1024, 2 * MiB])
async def test_every_byte_across_generations_and_regions(
    tmp_path: Path, snapshot_factory: Factory, kit: Any, batch_bytes: int
) -> None:
    leaks = kit.LeakCheck(tmp_path)
    snap = snapshot_factory(8 * MiB, generations=3)
    # batch = one page: one page per fault (the window does not grow either)
    server = await started(tmp_path, snap, batch_bytes=batch_bytes, window_max_bytes=batch_bytes)
    # three regions (separate mappings, so with gaps in the address space)
    regions = [3 * MiB, 1 * MiB, 4 * MiB]
    ops = [{"op": "read", "offset": 0, "length": 8 * MiB, "out": "all"}]
    result, child = await kit.serve_child(server, tmp_path, regions, ops)
    assert child.output("all") == snap.expected
    assert result.reason == "peer-closed"
    s = result.stats
    assert s.copy_pages + s.zero_pages == 8 * MiB // P
    assert s.copy_pages > 0 and s.zero_pages > 0
    assert s.faults == s.lat_count == sum(s.lat_hist)
    if batch_bytes == P:
        assert s.faults == 8 * MiB // P
    else:
        assert s.faults < 8 * MiB // P // 4
    assert not s.running and s.stop_error == 0
    await server.close()
    leaks.check()


async def test_reads_and_writes(tmp_path: Path, snapshot_factory: Factory, kit: Any) -> None:
    snap = snapshot_factory(2 * MiB)
    server = await started(tmp_path, snap)
    patch = bytes(range(256)) * 20
    ops = [
        {"op": "write", "offset": 5 * P + 100, "data": patch.hex()},  # write faults first
        {"op": "touch", "region": 0, "pages": [300, 301, 7], "write": True},
        {"op": "read", "offset": 0, "length": 2 * MiB, "out": "all"},
    ]
    _, child = await kit.serve_child(server, tmp_path, [2 * MiB], ops, fields=["page_size_kib"])
    want = bytearray(snap.expected)
    want[5 * P + 100 : 5 * P + 100 + len(patch)] = patch
    for page in (300, 301, 7):
        want[page * P : page * P + 8] = struct.pack("<Q", page)
    assert child.output("all") == bytes(want)
    await server.close()


async def test_remove_then_retouch_reads_zeros(
    tmp_path: Path, snapshot_factory: Factory, kit: Any
) -> None:
    snap = snapshot_factory(2 * MiB, zero_share=0.0)
    server = await started(tmp_path, snap)
    ops = [
        {"op": "read", "offset": 0, "length": 64 * P, "out": "before"},
        {"op": "discard", "offset": 8 * P, "length": 4 * P},  # served pages
        {"op": "discard", "offset": 200 * P, "length": 2 * P},  # never touched
        {"op": "read", "offset": 0, "length": 256 * P, "out": "after"},
    ]
    result, child = await kit.serve_child(server, tmp_path, [2 * MiB], ops)
    assert child.output("before") == snap.expected[: 64 * P]
    want = bytearray(snap.expected[: 256 * P])
    want[8 * P : 12 * P] = bytes(4 * P)
    want[200 * P : 202 * P] = bytes(2 * P)
    assert child.output("after") == bytes(want)
    s = result.stats
    assert s.removes == 2 and s.removed_pages == 6
    assert s.removed_faults >= 2  # the two discarded ranges faulted again
    await server.close()


@pytest.mark.parametrize("prefetch", [False, True])
async def test_remove_racing_faults(
    tmp_path: Path, snapshot_factory: Factory, kit: Any, prefetch: bool
) -> None:
    npages = 2048
    snap = snapshot_factory(npages * P, zero_share=0.0)
    if prefetch:  # the prefetch thread races the REMOVEs too
        snap.memory = dataclasses.replace(snap.memory, prefetch=[(0, npages * P)])
    server = await started(tmp_path, snap, batch_bytes=64 * 1024, prefetch_batch_bytes=16 * P)
    discards = list(range(3, npages, 7))
    ops = [
        {"op": "race", "pages": npages, "discards": discards, "out": "race"},
        {"op": "read", "offset": 0, "length": npages * P, "out": "final"},
    ]
    result, child = await kit.serve_child(server, tmp_path, [npages * P], ops)
    race = child.output("race")
    final = child.output("final")
    removed = set(discards)
    for p in range(npages):
        snapshot_page = snap.expected[p * P : (p + 1) * P]
        seen = race[p * 8 : p * 8 + 8]
        # during the race a page reads as the snapshot or, once removed, zeros
        assert seen in (snapshot_page[:8], bytes(8)), p
        got = final[p * P : (p + 1) * P]
        # after the race: stale snapshot data never comes back for a removed page
        assert got == (bytes(P) if p in removed else snapshot_page), p
    assert result.stats.removes == len(discards)
    assert result.stats.prefetch_error == 0
    await server.close()


async def test_peer_killed_mid_fault(tmp_path: Path, snapshot_factory: Factory, kit: Any) -> None:
    leaks = kit.LeakCheck(tmp_path)
    snap = snapshot_factory(64 * MiB, generations=2, max_run_blocks=4)
    server = await started(tmp_path, snap, batch_bytes=P)
    ops = [{"op": "read", "offset": 0, "length": 64 * MiB, "out": "x"}] * 20
    child = await kit.spawn_child(tmp_path, server.socket_path, [64 * MiB], ops)
    serving = asyncio.ensure_future(server.serve())
    async with asyncio.timeout(30):
        await server.ready.wait()
        await kit.until(lambda: (s := server.stats()) is not None and s.faults >= 500)
        child.proc.send_signal(signal.SIGKILL)
        result = await serving
        assert await child.finish() == -signal.SIGKILL
    assert result.reason in ("peer-closed", "engine-stopped")
    assert not result.stats.running
    await server.close()
    assert not server.socket_path.exists()
    leaks.check()


async def test_stats_readable_while_serving_and_stop(
    tmp_path: Path, snapshot_factory: Factory, kit: Any
) -> None:
    leaks = kit.LeakCheck(tmp_path)
    snap = snapshot_factory(4 * MiB)
    server = await started(tmp_path, snap)
    ops = [{"op": "read", "offset": 0, "length": MiB, "out": "a"}, {"op": "wait"}]
    child = await kit.spawn_child(tmp_path, server.socket_path, [4 * MiB], ops)
    serving = asyncio.ensure_future(server.serve())
    async with asyncio.timeout(30):
        await child.expect_line("connected")
        await child.expect_line("waiting")
        s = server.stats()
        assert s is not None and s.running
        # counters settle just after the ioctl that woke the reader
        await kit.until(lambda: (s := server.stats()) is not None and s.lat_count == s.faults)
        s = server.stats()
        assert s is not None and s.copy_bytes + s.zero_bytes == MiB
        assert kit.engine_threads() == ["wr-uffd-fault"]
        server.stop()  # the daemon stops serving while the VMM still runs
        result = await serving
        assert result.reason == "stopped"
        await child.go()
        assert await child.finish() == 0
    assert child.output("a") == snap.expected[:MiB]
    await server.close()
    leaks.check()


async def test_prefetch_and_working_set(
    tmp_path: Path, snapshot_factory: Factory, kit: Any
) -> None:
    snap = snapshot_factory(8 * MiB)
    order = [40, 41, 900, 3, 1500]  # first-touch order of a small working set
    server = await started(tmp_path, snap, batch_bytes=P, window_max_bytes=P)
    ops = [{"op": "touch", "region": 0, "pages": order}]
    first, _ = await kit.serve_child(server, tmp_path, [8 * MiB], ops)
    await server.close()
    assert first.working_set == [(40 * P, 2 * P), (900 * P, P), (3 * P, P), (1500 * P, P)]

    # the next resume prefetches that record: the same touches fault no more
    memory = dataclasses.replace(snap.memory, prefetch=first.working_set)
    server = UffdServer(tmp_path / "uffd2.sock", memory, batch_bytes=P, window_max_bytes=P)
    await server.start()
    ops = [{"op": "wait"}, {"op": "touch", "region": 0, "pages": order}]
    ops.append({"op": "read", "offset": 0, "length": 8 * MiB, "out": "all"})
    child = await kit.spawn_child(tmp_path, server.socket_path, [8 * MiB], ops)
    serving = asyncio.ensure_future(server.serve())
    async with asyncio.timeout(30):
        await child.expect_line("connected")
        await child.expect_line("waiting")
        await kit.until(
            lambda: (
                (s := server.stats()) is not None
                and not s.prefetch_running
                and s.prefetch_pages == 5
            )
        )
        faults_before = server.stats().faults
        await child.go()
        result = await serving
        assert await child.finish() == 0
    s = result.stats
    assert s.prefetch_pages == 5 and s.prefetch_error == 0
    assert s.faults - faults_before == 8 * MiB // P - 5  # every page but the prefetched
    assert child.output("all")[40 * P : 42 * P] == snap.expected[40 * P : 42 * P]
    assert child.output("all") == snap.expected
    await server.close()


async def test_no_prefetch_flag_ignores_the_map(
    tmp_path: Path, snapshot_factory: Factory, kit: Any
) -> None:
    snap = snapshot_factory(MiB)
    memory = dataclasses.replace(snap.memory, prefetch=[(0, MiB)])
    server = UffdServer(tmp_path / "u.sock", memory, prefetch=False)
    await server.start()
    ops = [{"op": "read", "offset": 0, "length": MiB, "out": "all"}]
    result, child = await kit.serve_child(server, tmp_path, [MiB], ops)
    assert result.stats.prefetch_pages == 0 and child.output("all") == snap.expected
    await server.close()


async def test_bad_snapshot_fails_at_start(
    tmp_path: Path, snapshot_factory: Factory, kit: Any
) -> None:
    snap = snapshot_factory(MiB, generations=2)
    os.truncate(snap.memory.generations[1], 4096)
    server = UffdServer(tmp_path / "u.sock", snap.memory)
    with pytest.raises(ValueError, match="generation 1, which has 4096 bytes"):
        await server.start()
    assert not (tmp_path / "u.sock").exists()


async def test_stop_before_any_peer(tmp_path: Path, snapshot_factory: Factory, kit: Any) -> None:
    leaks = kit.LeakCheck(tmp_path)
    server = await started(tmp_path, snapshot_factory(MiB))
    serving = asyncio.ensure_future(server.serve())
    await asyncio.sleep(0.01)
    server.stop()
    with pytest.raises(ServeStopped, match="before a VMM connected"):
        await serving
    await server.close()
    assert not server.socket_path.exists()
    leaks.check()
