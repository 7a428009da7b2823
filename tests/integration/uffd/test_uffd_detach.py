"""Fill and detach against the real kernel uffd: after every data page is installed the
guest memory is unregistered, and the peer runs on with the server gone entirely
(what a daemon restart looks like to a detached VM).  A page given back with REMOVE,
before or after the detach, reads zeros, never snapshot data."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from wrennd.uffd.detach import fill_bytes
from wrennd.uffd.server import UffdServer

pytestmark = pytest.mark.uffd
MiB = 1 << 20
P = 4096


async def test_fill_detach_then_remove_reads_zeros_without_the_server(
    tmp_path: Path, snapshot_factory: Callable[..., Any], kit: Any
) -> None:
    leaks = kit.LeakCheck(tmp_path)
    snap = snapshot_factory(16 * MiB, generations=2)
    server = UffdServer(tmp_path / "uffd.sock", snap.memory, fill=True)
    await server.start()
    data_bytes = fill_bytes(server.detaching.ranges)
    assert 0 < data_bytes < 16 * MiB  # zero-fill entries are not filled
    ops = [
        {"op": "read", "offset": 0, "length": 16 * P, "out": "before"},
        {"op": "discard", "offset": 4 * P, "length": 4 * P},  # REMOVE while served
        {"op": "wait"},
        {"op": "discard", "offset": 100 * P, "length": 3 * P},  # REMOVE after the detach
        {"op": "read", "offset": 0, "length": 16 * MiB, "out": "after"},
    ]
    child = await kit.spawn_child(tmp_path, server.socket_path, [10 * MiB, 6 * MiB], ops)
    try:
        async with asyncio.timeout(60):
            serving = asyncio.ensure_future(server.serve())
            await child.expect_line("connected")
            await child.expect_line("waiting")
            await kit.until(lambda: not server.stats().prefetch_running)  # type: ignore[union-attr]
            stats = server.stats()
            assert stats is not None and stats.prefetch_error == 0
            server.detaching.request()
            server.stop()
            result = await serving
            assert result.reason == "detached" and server.detaching.done
            await server.close()  # the "daemon" is gone: nothing serves the peer now
            await child.go()
            assert await child.finish() == 0
    except BaseException:
        if child.proc.returncode is None:
            child.proc.kill()
            await child.finish()
        raise
    assert child.output("before") == snap.expected[: 16 * P]
    want = bytearray(snap.expected)
    want[4 * P : 8 * P] = bytes(4 * P)
    want[100 * P : 103 * P] = bytes(3 * P)
    assert child.output("after") == bytes(want)
    leaks.check()
