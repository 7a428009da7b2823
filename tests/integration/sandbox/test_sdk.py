"""The Python SDK against a real daemon under fcsim: every call, sync and async; the examples."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.sandbox.running_daemon import Daemon
from wrennd.sdk import (
    AsyncSandbox,
    AsyncTemplate,
    BadRequest,
    GuestFailure,
    NotFound,
    Sandbox,
    SandboxNotFound,
    Template,
    WrongState,
)

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd]
REPO = Path(__file__).resolve().parents[3]


def _file(path: Path, size: int) -> str:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sync_sdk_every_call(running: Daemon, tmp_path: Path) -> None:
    sock = running.socket
    with Sandbox.create("base", socket=sock, memory_mib=64, metadata={"t": "sync"}) as sb:
        assert sb.state == "running" and sb.id.startswith("sb-")
        r = sb.exec(["printf", "\\000\\377"])
        assert (r.stdout, r.exit_code, r.ok) == (b"\x00\xff", 0, True)
        r = sb.exec("cat; echo err >&2; exit 4", stdin=b"in\x00put", env={"A": "1"}, cwd="/tmp")
        assert (r.stdout, r.stderr, r.exit_code) == (b"in\x00put", b"err\n", 4)
        assert sb.exec("sleep 5", timeout=0.5).timed_out
        info = sb.files.write("/root/w.bin", b"\x00\x01\x02", mode=0o600)
        assert info.size == 3 and info.mode & 0o777 == 0o600
        assert info.sha256 == hashlib.sha256(b"\x00\x01\x02").hexdigest()
        assert sb.files.read("/root/w.bin") == b"\x00\x01\x02"
        local = tmp_path / "up.bin"
        digest = _file(local, 5 << 20 | 123)
        assert sb.files.upload(local, "/root/up.bin").sha256 == digest
        got = sb.files.download("/root/up.bin", tmp_path / "down.bin")
        assert got.sha256 == digest and (tmp_path / "down.bin").read_bytes() == local.read_bytes()
        assert sb.files.mkdir("/root/d/e") and not sb.files.mkdir("/root/d/e")
        assert sb.files.stat("/root/d").is_dir
        assert {"w.bin", "up.bin", "d"} <= {e.name for e in sb.files.list("/root")}
        sb.files.remove("/root/d", recursive=True)
        with pytest.raises(GuestFailure) as missing:
            sb.files.stat("/root/d")
        assert missing.value.data["code"] == "ENOENT"
        assert [s.id for s in Sandbox.list(socket=sock)] == [sb.id]
        assert sb.pause().state == "paused"
        with pytest.raises(WrongState) as wrong:
            sb.exec("true")
        assert wrong.value.data["state"] == "paused"
        assert sb.resume().state == "running"
        assert sb.files.read("/root/w.bin") == b"\x00\x01\x02"
        assert sb.set_timeout(600).raw["timeout_s"] == 600
        assert sb.refresh().id == sb.id
        tpl = Template.create("tsync", sb, socket=sock)
        assert tpl.name == "tsync" and [t.name for t in Template.list(socket=sock)] == ["tsync"]
        assert Template.get("tsync", socket=sock).info["sandboxes"] == []
        with tpl.spawn(memory_mib=64) as clone:
            assert clone.files.read("/root/w.bin") == b"\x00\x01\x02"
        tpl.delete()
        with pytest.raises(NotFound):
            Template.get("tsync", socket=sock)
        sid = sb.id
    assert Sandbox.list(socket=sock) == []  # the context manager destroyed it
    with pytest.raises(SandboxNotFound):
        Sandbox.connect(sid, socket=sock)
    with pytest.raises(BadRequest):
        Sandbox.create("base", "tsync", socket=sock)


async def test_async_sdk_every_call(running: Daemon, tmp_path: Path) -> None:
    sock = running.socket
    async with await AsyncSandbox.create("base", socket=sock, memory_mib=64) as sb:
        r = await sb.exec(["printf", "\\000\\377"])
        assert r.stdout == b"\x00\xff"
        r = await sb.exec("cat", stdin="text", user="nobody", cwd="/")
        assert r.stdout == b"text"
        info = await sb.files.write("/root/a.txt", "hello")
        assert info.sha256 == hashlib.sha256(b"hello").hexdigest()
        assert await sb.files.read("/root/a.txt") == b"hello"
        local = tmp_path / "up.bin"
        digest = _file(local, 3 << 20)
        seen: list[int] = []
        up = await sb.files.upload(local, "/root/up.bin", progress=lambda d, t: seen.append(d))
        assert up.sha256 == digest and seen[-1] == 3 << 20
        down = await sb.files.download("/root/up.bin", tmp_path / "d.bin")
        assert down.sha256 == digest and down.size == 3 << 20
        assert await sb.files.mkdir("/root/x", parents=False)
        assert (await sb.files.stat("/root/x")).type == "dir"
        assert "x" in [e.name for e in await sb.files.list("/root")]
        await sb.files.remove("/root/x")
        assert [s.id for s in await AsyncSandbox.list(socket=sock, state="running")] == [sb.id]
        assert (await sb.pause()).state == "paused"
        assert (await sb.resume()).state == "running"
        assert (await sb.set_timeout(None)).raw["timeout_s"] is None
        assert (await sb.refresh()).state == "running"
        tpl = await AsyncTemplate.create("tasync", sb, socket=sock)
        assert [t.name for t in await AsyncTemplate.list(socket=sock)] == ["tasync"]
        assert (await AsyncTemplate.get("tasync", socket=sock)).name == "tasync"
        clone = await tpl.spawn(memory_mib=64)
        async with clone:
            assert (await clone.exec("cat /root/a.txt")).stdout == b"hello"
        await tpl.delete()
        again = await AsyncSandbox.connect(sb.id, socket=sock)
        async with again:  # connect() keeps the sandbox by default
            assert again.id == sb.id
    assert await AsyncSandbox.list(socket=sock) == []


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples").glob("*.py")))
def test_examples_run(running: Daemon, example: str) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / example)],
        env=running.env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "an example says what it did"
