"""Raw transfer channels (sandbox.files.stream) against a real daemon under fcsim: byte-exact
both ways, interruptions that leave the old file, tokens that are bad, used or expired, and
many transfers at once."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.sandbox.running_daemon import Daemon
from tests.polling import wait_for
from wrennd.rpc.client import Client, RemoteError
from wrennd.rpc.client_channel import ClientChannel
from wrennd.sdk import Sandbox, transfer

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd]
IDLE = 3  # the daemon's transfer_idle_timeout here, in seconds


@pytest.fixture
def daemon_env() -> dict[str, str]:
    """The conftest's running daemon, with a short transfer idle timeout."""
    return {"WRENND_TRANSFER_IDLE_TIMEOUT": str(IDLE)}


@pytest.fixture
def sandbox(running: Daemon) -> Iterator[str]:
    sb = Sandbox.create("base", socket=running.socket, memory_mib=64, keep=True)
    yield sb.id
    sb.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def guest_sha(d: Daemon, sid: str, path: str) -> str:
    with Sandbox.connect(sid, socket=d.socket) as sb:
        return sb.exec(["sha256sum", path]).text.split()[0]


def temp_files(d: Daemon, sid: str, directory: str) -> list[str]:
    with Sandbox.connect(sid, socket=d.socket) as sb:
        return [e.name for e in sb.files.list(directory) if e.name.startswith(".wrenn-")]


async def open_upload(c: Client, sid: str, path: str) -> tuple[str, ClientChannel]:
    token = (await c.call("sandbox.files.upload", {"id": sid, "path": path}))["transfer"]
    channel = await c.open_channel(token)
    assert channel.answer == {"transfer": token, "direction": "upload", "offset": 0}
    return token, channel


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "json"])
async def test_files_go_in_and_out_byte_exact(
    running: Daemon, sandbox: str, tmp_path: Path, raw: bool
) -> None:
    c = await Client.connect(running.socket)
    for size in (0, 1, (6 << 20) + 12345):
        data = os.urandom(size)
        chunks = [data[i : i + 1_000_000] for i in range(0, size, 1_000_000)]
        got = await transfer.upload(c, sandbox, "/root/f.bin", chunks, raw=raw)
        assert (got["size"], got["sha256"]) == (size, sha(data))
        assert await asyncio.to_thread(guest_sha, running, sandbox, "/root/f.bin") == sha(data)
        back = tmp_path / "back.bin"
        down = await transfer.download(c, sandbox, "/root/f.bin", back, raw=raw)
        assert (down["size"], down["sha256"]) == (size, sha(data))
        assert back.read_bytes() == data
    await c.close()


async def test_interrupted_raw_uploads_leave_the_old_file(running: Daemon, sandbox: str) -> None:
    with Sandbox.connect(sandbox, socket=running.socket) as sb:
        sb.files.write("/root/keep.txt", b"old contents")
    # 1: the client goes away in the middle (both its connections close).
    c = await Client.connect(running.socket)
    _, ch = await open_upload(c, sandbox, "/root/keep.txt")
    await ch.send(b"new" * 100_000)
    ch.close()
    await c.close()
    # 2: the channel ends early, then finish claims the whole size.
    c = await Client.connect(running.socket)
    token, ch = await open_upload(c, sandbox, "/root/keep.txt")
    await ch.send(b"new" * 1000)
    await ch.end()
    with pytest.raises(RemoteError, match="size 6000 announced, 3000 bytes received"):
        await c.call("sandbox.files.upload.finish", {"transfer": token, "size": 6000})
    ch.close()
    # 3: the bytes stop coming (no half-close): the idle timeout aborts the upload.
    token, ch = await open_upload(c, sandbox, "/root/keep.txt")
    await ch.send(b"new" * 1000)
    started = time.monotonic()
    with pytest.raises(RemoteError, match=f"no bytes for {IDLE} s"):
        await c.call("sandbox.files.upload.finish", {"transfer": token, "size": 3000})
    assert time.monotonic() - started < IDLE + 10
    ch.close()
    await c.close()

    def clean() -> bool:
        return not temp_files(running, sandbox, "/root")

    await wait_for(clean, timeout=15, what="the temporary files were removed")
    with Sandbox.connect(sandbox, socket=running.socket) as sb:
        assert sb.files.read("/root/keep.txt") == b"old contents"


def test_a_killed_wrennctl_cp_leaves_the_old_file(
    running: Daemon, sandbox: str, tmp_path: Path
) -> None:
    with Sandbox.connect(sandbox, socket=running.socket) as sb:
        sb.files.write("/root/big.bin", b"old contents")
    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        for _ in range(256):
            f.write(os.urandom(1 << 20))
    cmd = [sys.executable, "-m", "wrennd.cli", "--socket", str(running.socket)]
    proc = subprocess.Popen([*cmd, "cp", str(src), f"{sandbox}:/root/big.bin"])

    def writing() -> bool:
        with Sandbox.connect(sandbox, socket=running.socket) as sb:
            entries = sb.files.list("/root")
        return any(e.name.startswith(".wrenn-") and e.size > 1 << 20 for e in entries)

    try:
        deadline = time.monotonic() + 120
        while not writing():
            assert proc.poll() is None, "the copy ended before it could be interrupted"
            assert time.monotonic() < deadline, "the upload never started"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 30
    while temp_files(running, sandbox, "/root"):
        assert time.monotonic() < deadline, "the temporary file stayed"
        time.sleep(0.1)
    with Sandbox.connect(sandbox, socket=running.socket) as sb:
        assert sb.files.read("/root/big.bin") == b"old contents"


async def test_bad_used_and_expired_tokens_are_refused(running: Daemon, sandbox: str) -> None:
    c = await Client.connect(running.socket)
    with pytest.raises(RemoteError) as bad:
        await c.open_channel("0123456789abcdef" * 2)
    assert bad.value.type == "not_found"
    with pytest.raises(RemoteError) as malformed:
        await c.open_channel("not-a-token")
    assert malformed.value.type == "invalid_params"
    # One channel per transfer; the token is gone once the upload finished.
    token, ch = await open_upload(c, sandbox, "/root/t.txt")
    with pytest.raises(RemoteError, match="already has its channel"):
        await c.open_channel(token)
    await ch.send(b"hello")
    await ch.end()
    done = await c.call("sandbox.files.upload.finish", {"transfer": token, "size": 5})
    assert done["sha256"] == sha(b"hello")
    ch.close()
    with pytest.raises(RemoteError) as used:
        await c.open_channel(token)
    assert used.value.type == "not_found"
    # A download token nobody uses expires after the idle timeout.
    params = {"id": sandbox, "path": "/root/t.txt"}
    opened = await c.call("sandbox.files.download.open", params)
    assert opened["size"] == 5
    with pytest.raises(RemoteError, match="has no channel yet"):
        await c.call("sandbox.files.download.finish", {"transfer": opened["transfer"]})
    await asyncio.sleep(IDLE + 2)
    with pytest.raises(RemoteError) as expired:
        await c.open_channel(opened["transfer"])
    assert expired.value.type == "not_found"
    # A missing file fails when the download is opened, not in the middle of a stream.
    with pytest.raises(RemoteError) as missing:
        await c.call("sandbox.files.download.open", {"id": sandbox, "path": "/root/none"})
    assert missing.value.data.get("code") == "ENOENT"
    await c.close()


async def test_many_transfers_at_once(running: Daemon, sandbox: str, tmp_path: Path) -> None:
    c = await Client.connect(running.socket)
    blobs = [os.urandom((2 << 20) + i * 7919) for i in range(6)]
    for i in range(3):  # what the downloads will read
        await transfer.upload(c, sandbox, f"/root/d{i}.bin", [blobs[i]])

    async def up(i: int) -> dict[str, Any]:
        chunks = [blobs[i][j : j + 300_000] for j in range(0, len(blobs[i]), 300_000)]
        return await transfer.upload(c, sandbox, f"/root/u{i}.bin", chunks)

    async def down(i: int) -> dict[str, Any]:
        return await transfer.download(c, sandbox, f"/root/d{i}.bin", tmp_path / f"d{i}.bin")

    results = await asyncio.gather(*(up(i) for i in range(3, 6)), *(down(i) for i in range(3)))
    for i, got in zip([3, 4, 5, 0, 1, 2], results, strict=True):
        assert got["sha256"] == sha(blobs[i])
    for i in range(3):
        assert (tmp_path / f"d{i}.bin").read_bytes() == blobs[i]
        digest = await asyncio.to_thread(guest_sha, running, sandbox, f"/root/u{i + 3}.bin")
        assert digest == sha(blobs[i + 3])
    await c.close()
