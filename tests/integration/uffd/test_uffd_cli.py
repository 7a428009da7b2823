"""``python -m wrennd.uffd serve`` end to end: a snapshot made by
``python -m wrennd.snapshot``, a child playing Firecracker, stats JSON."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.uffd
MiB = 1 << 20


async def run(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


def make_memfile(path: Path) -> bytes:
    data = bytearray(os.urandom(8 * MiB))
    data[2 * MiB : 4 * MiB] = bytes(2 * MiB)  # becomes zero-fill
    path.write_bytes(data)
    return bytes(data)


async def ingest(tmp_path: Path) -> tuple[Path, Path, bytes]:
    memfile, snap, store = tmp_path / "mem", tmp_path / "snap", tmp_path / "store"
    expected = make_memfile(memfile)
    proc = await run(
        "-m", "wrennd.snapshot", "ingest-full", "--memfile", str(memfile),
        "--snapshot", str(snap), "--store", str(store),
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return snap, store, expected


async def test_serve_snapshot_until_peer_exits(tmp_path: Path, kit: Any) -> None:
    snap, store, expected = await ingest(tmp_path)
    sock, stats = tmp_path / "fc.sock", tmp_path / "stats.json"
    server = await run(
        "-m", "wrennd.uffd", "serve", "--socket", str(sock), "--snapshot", str(snap),
        "--store", str(store), "--batch-bytes", "131072", "--stats-json", str(stats),
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            await kit.until(sock.exists)
            ops = [{"op": "read", "offset": 0, "length": 8 * MiB, "out": "all"}]
            child = await kit.spawn_child(tmp_path, sock, [3 * MiB, 5 * MiB], ops)
            assert await child.finish() == 0
            _, err = await server.communicate()
    finally:
        if server.returncode is None:
            server.kill()
            await server.communicate()
    assert server.returncode == 0, err.decode()
    assert child.output("all") == expected
    report = json.loads(stats.read_text())
    assert report["reason"] == "peer-closed"
    s = report["stats"]
    assert s["copy_bytes"] + s["zero_bytes"] == 8 * MiB
    assert s["zero_bytes"] >= 2 * MiB
    assert s["faults"] <= 8 * MiB // 131072 + 2
    assert report["working_set"][0] == [0, 131072]
    assert [r["size"] for r in report["regions"]] == [3 * MiB, 5 * MiB]
    assert not sock.exists()


async def test_missing_generation_is_an_error(tmp_path: Path) -> None:
    snap, store, _ = await ingest(tmp_path)
    shutil.rmtree(store)
    shutil.rmtree(snap / "memfiles")
    proc = await run(
        "-m", "wrennd.uffd", "serve", "--socket", str(tmp_path / "s"),
        "--snapshot", str(snap), "--store", str(store),
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 1
    assert "generation" in err.decode() and "missing" in err.decode()
    assert not (tmp_path / "s").exists()


async def test_usage_error(tmp_path: Path) -> None:
    proc = await run("-m", "wrennd.uffd", "serve", "--socket", str(tmp_path / "s"))
    _, err = await proc.communicate()
    assert proc.returncode == 2 and "--snapshot" in err.decode()


async def test_sigterm_before_any_peer_exits_cleanly(tmp_path: Path, kit: Any) -> None:
    snap, store, _ = await ingest(tmp_path)
    sock = tmp_path / "fc.sock"
    server = await run(
        "-m", "wrennd.uffd", "serve", "--socket", str(sock), "--snapshot", str(snap),
        "--store", str(store),
    )  # fmt: skip
    async with asyncio.timeout(30):
        await kit.until(sock.exists)
        server.send_signal(signal.SIGTERM)
        _, err = await server.communicate()
    assert server.returncode == 0, err.decode()
    assert "stopped before a VMM connected" in err.decode()
    assert not sock.exists()
