"""Client.connect_when_up: waits for a daemon that is still starting, not for a dead one."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from wrennd.rpc.client import Client, DaemonNotRunning

SEEN: list[str] = []


async def _answer_host_info(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = json.loads(await reader.readline())
    SEEN.append(request["method"])
    reply = {"jsonrpc": "2.0", "id": request["id"], "result": {"version": "test"}}
    writer.write(json.dumps(reply).encode() + b"\n")
    await writer.drain()
    await reader.read()  # until the client closes
    writer.close()


async def test_connects_once_the_socket_appears(tmp_path: Path) -> None:
    path = tmp_path / "late.sock"
    SEEN.clear()

    async def start_late() -> asyncio.Server:
        await asyncio.sleep(0.3)
        return await asyncio.start_unix_server(_answer_host_info, str(path))

    starter = asyncio.create_task(start_late())
    client = await Client.connect_when_up(path, 10)
    server = await starter
    assert SEEN == ["host.info"]  # it asked the daemon, not only connected
    await client.close()
    server.close()


async def test_gives_up_at_the_deadline(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DaemonNotRunning):
        await Client.connect_when_up(tmp_path / "never.sock", 0.3)
    assert 0.3 <= loop.time() - started < 5


async def test_a_dead_daemon_is_reported_at_once(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DaemonNotRunning, match="exited"):
        await Client.connect_when_up(tmp_path / "never.sock", 60, alive=lambda: False)
    assert loop.time() - started < 5
