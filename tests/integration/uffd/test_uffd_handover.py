"""A second server takes over a live VMM's uffd (the daemon's hand-over, in one process):
the first engine's REMOVEs are in its removal log, the second marks them again, so a
page given back comes back as zeros, never as snapshot data; every other page is the
snapshot's, and the second engine fills and detaches as the first would have."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from wrennd.uffd import removals
from wrennd.uffd.server import UffdServer

pytestmark = pytest.mark.uffd
MiB = 1 << 20
P = 4096


def test_removal_log_reads_merged_ranges_and_ignores_a_torn_record(tmp_path: Path) -> None:
    log = tmp_path / "removed.log"
    assert removals.read_log(log) == []
    fd = removals.open_log(log, fresh=True)
    for rec in [(8 * P, 2 * P), (0, P), (9 * P, 3 * P), (20 * P, 0)]:
        os.write(fd, removals.RECORD.pack(*rec))
    os.write(fd, b"\x01\x02\x03")  # a torn tail
    os.close(fd)
    assert removals.read_log(log) == [(0, P), (8 * P, 4 * P)]
    os.close(removals.open_log(log, fresh=True))
    assert removals.read_log(log) == []


async def test_second_server_serves_zeros_for_pages_removed_under_the_first(
    tmp_path: Path, snapshot_factory: Callable[..., Any], kit: Any
) -> None:
    leaks = kit.LeakCheck(tmp_path)
    snap = snapshot_factory(16 * MiB, generations=2)
    log = tmp_path / "removed.log"
    first = UffdServer(tmp_path / "uffd.sock", snap.memory, remove_log=log)
    await first.start()
    ops = [
        {"op": "read", "offset": 0, "length": 16 * P, "out": "before"},
        {"op": "discard", "offset": 4 * P, "length": 4 * P},  # given back to the first
        {"op": "wait"},
        {"op": "discard", "offset": 200 * P, "length": 2 * P},  # given back to the second
        {"op": "read", "offset": 0, "length": 16 * MiB, "out": "after"},
    ]
    child = await kit.spawn_child(tmp_path, first.socket_path, [10 * MiB, 6 * MiB], ops)
    second = None
    try:
        async with asyncio.timeout(60):
            serving = asyncio.ensure_future(first.serve())
            await child.expect_line("connected")
            await child.expect_line("waiting")
            await kit.until(lambda: first.stats().removes >= 1)  # type: ignore[union-attr]
            handed = first.handover_fds()
            assert handed is not None
            uffd, peer = (os.dup(fd) for fd in handed)  # what the fd store keeps
            regions = list(first.regions)
            first.stop()
            assert (await serving).reason == "stopped"
            await first.close()
            assert removals.read_log(log) == [(4 * P, 4 * P)]

            second = UffdServer(
                tmp_path / "uffd.sock", snap.memory, remove_log=log, fresh_log=False, fill=True
            )
            await second.start(listen_socket=False)
            serving = asyncio.ensure_future(
                second.serve_handed(uffd, socket.socket(fileno=peer), regions)
            )
            await kit.until(second.ready.is_set)
            assert second.peer_pid == child.proc.pid
            await child.go()
            assert await child.finish() == 0
            result = await serving
            assert result.reason == "peer-closed"
            assert result.stats.removed_faults >= 4 and result.stats.remove_log_errors == 0
    except BaseException:
        if child.proc.returncode is None:
            child.proc.kill()
            await child.finish()
        raise
    finally:
        if second is not None:
            await second.close()
    assert child.output("before") == snap.expected[: 16 * P]
    want = bytearray(snap.expected)
    want[4 * P : 8 * P] = bytes(4 * P)
    want[200 * P : 202 * P] = bytes(2 * P)
    assert child.output("after") == bytes(want)
    assert removals.read_log(log) == [(4 * P, 4 * P), (200 * P, 2 * P)]
    leaks.check()


async def test_prefetch_rate_limits_the_fill(
    tmp_path: Path, snapshot_factory: Callable[..., Any], kit: Any
) -> None:
    """A fill capped at a rate takes at least its data bytes / rate; uncapped it is quick."""
    snap = snapshot_factory(16 * MiB, generations=1)
    rate = 4 * MiB
    timings = {}
    for name, limit in (("capped", rate), ("free", 0)):
        sock = tmp_path / f"{name}.sock"
        server = UffdServer(sock, snap.memory, fill=True, prefetch_rate=limit)
        await server.start()
        data = sum(n for _, n in server.detaching.ranges)
        child = await kit.spawn_child(tmp_path, sock, [16 * MiB], [{"op": "wait"}])
        try:
            async with asyncio.timeout(60):
                serving = asyncio.ensure_future(server.serve())
                await child.expect_line("connected")
                await child.expect_line("waiting")
                t0 = asyncio.get_running_loop().time()
                await kit.until(lambda s=server: not s.stats().prefetch_running)  # type: ignore[union-attr]
                timings[name] = asyncio.get_running_loop().time() - t0
                await child.go()
                assert await child.finish() == 0
                await serving
        finally:
            if child.proc.returncode is None:
                child.proc.kill()
                await child.finish()
            await server.close()
    assert data > 2 * MiB
    assert timings["capped"] >= 0.8 * data / rate, (timings, data)
    assert timings["free"] < timings["capped"], timings
