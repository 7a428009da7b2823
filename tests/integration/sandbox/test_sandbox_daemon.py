"""The sandbox API end to end: a real wrennd process, JSON-RPC over its socket, fcsim VMs.

The daemon runs against the test bed (``host_netns``), with its own network
names, a btrfs state dir and fcsim (no Firecracker binary here).  Also: SIGTERM
pauses every running sandbox and a restart resumes them on request; kill -9
then restart brings every sandbox to paused (it had a snapshot) or error
(it had none), with nothing left behind.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.sandbox.running_daemon import Daemon
from wrennd.rpc.client import Client, ClientError, RemoteError

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd]


@pytest.fixture
async def client(daemon: Daemon) -> AsyncIterator[Client]:
    daemon.start()
    c = await daemon.client()
    yield c
    for sb in (await c.call("sandbox.list"))["sandboxes"]:
        await c.call("sandbox.destroy", {"id": sb["id"]})
    await c.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_api_end_to_end(client: Client, place: Any) -> None:
    created = await client.call("sandbox.create", {"image": "base", "memory_mib": 64})
    sid = created["id"]
    got = await client.call("sandbox.exec", {"id": sid, "shell": "echo hi; exit 3"})
    assert (base64.b64decode(got["stdout"]), got["code"]) == (b"hi\n", 3)
    raw = await client.call("sandbox.exec", {"id": sid, "argv": ["printf", "\\000\\377"]})
    assert base64.b64decode(raw["stdout"]) == b"\x00\xff" and raw["encoding"] == "base64"
    text = await client.call("sandbox.exec", {"id": sid, "shell": "echo hi", "encoding": "text"})
    assert text["stdout"] == "hi\n"
    chunks: list[dict[str, Any]] = []
    streamed = await client.call(
        "sandbox.exec",
        {
            "id": sid,
            "argv": ["sh", "-c", "echo one; echo two >&2"],
            "stream": True,
            "encoding": "text",
        },
        on_notification=lambda m, p: chunks.append(p),
    )
    assert streamed["code"] == 0
    assert {(c["stream"], c["data"]) for c in chunks} == {("stdout", "one\n"), ("stderr", "two\n")}
    await client.call("sandbox.files.write", {"id": sid, "path": "/root/f", "data": b64(b"x1")})
    reports: list[dict[str, Any]] = []
    paused = await client.call(
        "sandbox.pause", {"id": sid}, on_notification=lambda m, p: reports.append(p)
    )
    assert paused["state"] == "paused"
    stages = [r["stage"] for r in reports]
    assert stages[0] == "prepare" and "ingest" in stages and stages[-1] == "done"
    (ingest,) = [r for r in reports if r["stage"] == "ingest"]
    assert ingest["memfile_bytes"] > 0 and ingest["total"] == 7  # the pause's stages
    used = (await client.call("sandbox.get", {"id": sid}))["usage"]
    # Allocated, not apparent: the 64 MiB memory is mostly zero, the 1 GiB layer a reflink.
    assert 0 < used["snapshot_bytes"] < 64 << 20 and 0 < used["disk_bytes"] < 64 << 20, used
    assert used["memory_bytes"] is None
    stats = await client.call("host.stats")
    assert stats["sandboxes"]["paused"] == 1 and stats["sandboxes"]["running"] == 0
    assert stats["scrub"]["enabled"] and stats["scrub"]["corrupt"] == []  # the scrub is wired
    with pytest.raises(RemoteError) as wrong:
        await client.call("sandbox.exec", {"id": sid, "argv": ["true"]})
    assert wrong.value.type == "wrong_state" and wrong.value.data["state"] == "paused"
    reports.clear()
    await client.call("sandbox.resume", {"id": sid}, on_notification=lambda m, p: reports.append(p))
    assert "snapshot_load" in [r["stage"] for r in reports]
    assert "pages_prefetched" in reports[-1] and reports[-1]["stage"] == "done"
    assert (await client.call("sandbox.get", {"id": sid}))["usage"]["memory_bytes"] > 0
    uffd = (await client.call("host.stats"))["uffd"]
    assert uffd["engines"] == 1, uffd
    read = await client.call("sandbox.files.read", {"id": sid, "path": "/root/f"})
    assert base64.b64decode(read["data"]) == b"x1"
    listed = await client.call("sandbox.files.list", {"id": sid, "path": "/root"})
    assert "f" in [e["name"] for e in listed["entries"]]
    with pytest.raises(RemoteError) as missing:
        await client.call("sandbox.get", {"id": "sb-000000000000"})
    assert missing.value.type == "sandbox_not_found"
    with pytest.raises(RemoteError) as noimage:
        await client.call("sandbox.create", {"image": "nope"})
    assert noimage.value.type == "not_found"
    await client.call("sandbox.destroy", {"id": sid})
    assert (await client.call("sandbox.list"))["sandboxes"] == []


async def test_sigterm_pauses_and_kill9_recovers(daemon: Daemon, place: Any) -> None:
    daemon.start()
    c = await daemon.client()
    a = (await c.call("sandbox.create", {"image": "base", "memory_mib": 64}))["id"]
    await c.call("sandbox.files.write", {"id": a, "path": "/root/a", "data": b64(b"A")})
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0
    record = json.loads((place.state_dir / "sandboxes" / a / "state.json").read_bytes())
    assert record["state"] == "paused"

    daemon.start(WRENND_UFFD_FILL="lazy")  # a's memory stays with the engine
    c = await daemon.client()
    assert (await c.call("sandbox.get", {"id": a}))["state"] == "paused"
    await c.call("sandbox.resume", {"id": a})
    read = await c.call("sandbox.files.read", {"id": a, "path": "/root/a"})
    assert base64.b64decode(read["data"]) == b"A"
    b = (await c.call("sandbox.create", {"image": "base", "memory_mib": 64}))["id"]
    await c.close()
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL

    daemon.start()
    c = await daemon.client()
    got_a = await c.call("sandbox.get", {"id": a})
    got_b = await c.call("sandbox.get", {"id": b})
    # a's memory was served by the dead daemon's UFFD engine: back to its snapshot.
    assert got_a["state"] == "paused" and "restored to its last snapshot" in got_a["error"]
    # b's VMM kept running and was adopted.
    assert got_b["state"] == "running" and got_b["error"] is None, got_b
    await c.call("sandbox.resume", {"id": a})
    read = await c.call("sandbox.files.read", {"id": a, "path": "/root/a"})
    assert base64.b64decode(read["data"]) == b"A"
    for sid in (a, b):
        await c.call("sandbox.destroy", {"id": sid})
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0
    assert not place.leaks()


async def _last_count(c: Client, sid: str, process: str) -> int:
    """The last number a guest counter printed (its retained output)."""
    out: list[str] = []

    def on_stream(method: str, p: dict[str, Any]) -> None:
        if method == "stream":
            out.append(p["data"])

    await c.call("sandbox.process.output", {"id": sid, "process": process}, on_stream)
    text = b"".join(base64.b64decode(chunk) for chunk in out).decode()
    return int(text.split()[-1])


async def test_kill9_keeps_running_sandboxes(daemon: Daemon, place: Any) -> None:
    """Running sandboxes outlive a kill -9 of the daemon: the next one adopts them, and
    a guest process goes on counting without a restart."""
    daemon.start()
    c = await daemon.client()
    # Counts in memory (a write to the guest's disk would block fcsim's freeze at pause).
    counter = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.05; done"
    ids, procs = [], {}
    for _ in range(3):
        sid = (await c.call("sandbox.create", {"image": "base", "memory_mib": 64}))["id"]
        procs[sid] = await c.call("sandbox.process.start", {"id": sid, "shell": counter})
        ids.append(sid)
    await asyncio.sleep(0.5)
    before = {sid: await _last_count(c, sid, procs[sid]["id"]) for sid in ids}
    vmm_pids = {sid: (await c.call("sandbox.get", {"id": sid}))["vmm"]["pid"] for sid in ids}
    await c.close()
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL

    daemon.start()
    c = await daemon.client()
    for sid in ids:
        got = await c.call("sandbox.get", {"id": sid})
        assert got["state"] == "running" and got["vmm"]["pid"] == vmm_pids[sid], got
        proc = await c.call("sandbox.process.get", {"id": sid, "process": procs[sid]["id"]})
        assert proc["pid"] == procs[sid]["pid"] and proc["running"], proc
        assert await _last_count(c, sid, procs[sid]["id"]) > before[sid]  # counted on
        ran = await c.call("sandbox.exec", {"id": sid, "shell": "echo ok", "encoding": "text"})
        assert ran["stdout"] == "ok\n"
        await c.call("sandbox.files.write", {"id": sid, "path": "/root/f", "data": b64(b"F")})
    # Pause and resume work on an adopted sandbox; destroy releases everything.
    await c.call("sandbox.pause", {"id": ids[0]})
    await c.call("sandbox.resume", {"id": ids[0]})
    read = await c.call("sandbox.files.read", {"id": ids[0], "path": "/root/f"})
    assert base64.b64decode(read["data"]) == b"F"
    for sid in ids:
        await c.call("sandbox.destroy", {"id": sid})
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0
    assert not place.leaks()


async def test_keep_alive_restart(daemon: Daemon, place: Any) -> None:
    """``wrennctl host restart`` and ``on_stop = "keep"`` exit leaving sandboxes running for
    the next daemon; one whose memory the daemon's UFFD engine serves is paused instead."""
    daemon.start(WRENND_UFFD_FILL="lazy")  # "served" keeps needing the engine
    c = await daemon.client()
    booted = (await c.call("sandbox.create", {"image": "base", "memory_mib": 64}))["id"]
    served = (await c.call("sandbox.create", {"image": "base", "memory_mib": 64}))["id"]
    await c.call("sandbox.pause", {"id": served})
    await c.call("sandbox.resume", {"id": served})
    pid = (await c.call("sandbox.get", {"id": booted}))["vmm"]["pid"]
    await c.close()
    wrennctl = Path(sys.executable).parent / "wrennctl"
    ctl = await asyncio.create_subprocess_exec(
        str(wrennctl),
        "--socket",
        str(daemon.socket),
        "host",
        "restart",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await ctl.communicate()
    assert ctl.returncode == 0, err
    assert daemon.proc is not None and daemon.proc.wait(90) == 0
    daemon.proc = None

    daemon.start(WRENND_ON_STOP="keep")
    c = await daemon.client()
    got = await c.call("sandbox.get", {"id": booted})
    assert got["state"] == "running" and got["vmm"]["pid"] == pid, got
    got_served = await c.call("sandbox.get", {"id": served})
    assert got_served["state"] == "paused" and got_served["error"] is None, got_served
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0  # on_stop = keep

    daemon.start()
    c = await daemon.client()
    got = await c.call("sandbox.get", {"id": booted})
    assert got["state"] == "running" and got["vmm"]["pid"] == pid, got
    assert (await c.call("sandbox.exec", {"id": booted, "shell": "echo kept", "encoding": "text"}))[
        "stdout"
    ] == "kept\n"
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0  # the default pauses all
    record = json.loads((place.state_dir / "sandboxes" / booted / "state.json").read_bytes())
    assert record["state"] == "paused"
    daemon.start()
    c = await daemon.client()
    for sid in (booted, served):
        await c.call("sandbox.destroy", {"id": sid})
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0
    assert not place.leaks()


async def test_kill9_rolls_memory_and_disk_back_together(daemon: Daemon, place: Any) -> None:
    """A sandbox that needs the dead daemon's UFFD engine goes back to its last snapshot
    with the disk of that snapshot: a file written after it is gone, one before intact."""
    daemon.start(WRENND_UFFD_FILL="lazy")  # the engine never detaches: no hand-over
    c = await daemon.client()
    sid = (await c.call("sandbox.create", {"image": "base", "memory_mib": 64}))["id"]
    await c.call("sandbox.files.write", {"id": sid, "path": "/root/before", "data": b64(b"B")})
    await c.call("sandbox.pause", {"id": sid})
    await c.call("sandbox.resume", {"id": sid})
    await c.call("sandbox.files.write", {"id": sid, "path": "/root/after", "data": b64(b"A")})
    await c.call("sandbox.exec", {"id": sid, "shell": "sync"})
    await c.close()
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL

    daemon.start()
    c = await daemon.client()
    got = await c.call("sandbox.get", {"id": sid})
    assert got["state"] == "paused", got
    recovered = got["recovered_from"]
    assert recovered["generation"] == 0 and "running" in recovered["reason"], got
    layer = place.state_dir / "sandboxes" / sid / "rootfs.ext4"
    fsck = await asyncio.create_subprocess_exec(
        "e2fsck",
        "-fn",
        str(layer),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await fsck.communicate()
    assert fsck.returncode == 0, out.decode()
    await c.call("sandbox.resume", {"id": sid})
    read = await c.call("sandbox.files.read", {"id": sid, "path": "/root/before"})
    assert base64.b64decode(read["data"]) == b"B"
    with pytest.raises(RemoteError):
        await c.call("sandbox.files.read", {"id": sid, "path": "/root/after"})
    await c.call("sandbox.pause", {"id": sid})
    assert (await c.call("sandbox.get", {"id": sid}))["recovered_from"] is None
    await c.call("sandbox.destroy", {"id": sid})
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0
    assert not place.leaks()


async def test_kill9_keeps_a_resumed_sandbox_whose_engine_detached(
    daemon: Daemon, place: Any
) -> None:
    """uffd_fill = background: after resume the engine installs the rest of memory and
    detaches, so the VM no longer needs the daemon and survives its kill -9."""
    daemon.start()
    c = await daemon.client()
    sid = (await c.call("sandbox.create", {"image": "base", "memory_mib": 64}))["id"]
    await c.call("sandbox.files.write", {"id": sid, "path": "/root/k", "data": b64(b"K")})
    await c.call("sandbox.pause", {"id": sid})
    await c.call("sandbox.resume", {"id": sid})
    deadline = time.monotonic() + 120
    while (got := await c.call("sandbox.get", {"id": sid}))["engine"]["state"] != "detached":
        assert got["engine"]["state"] in ("filling", "serving"), got
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.2)
    stats = await c.call("host.stats")
    assert stats["engines"][sid] == {"state": "detached"}
    pid = got["vmm"]["pid"]
    await c.close()
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL

    daemon.start()
    c = await daemon.client()
    got = await c.call("sandbox.get", {"id": sid})
    assert got["state"] == "running" and got["vmm"]["pid"] == pid, got
    assert got["recovered_from"] is None
    read = await c.call("sandbox.files.read", {"id": sid, "path": "/root/k"})
    assert base64.b64decode(read["data"]) == b"K"
    assert (await c.call("sandbox.exec", {"id": sid, "shell": "echo on", "encoding": "text"}))[
        "stdout"
    ] == "on\n"
    await c.call("sandbox.pause", {"id": sid})
    await c.call("sandbox.resume", {"id": sid})
    await c.call("sandbox.destroy", {"id": sid})
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0
    assert not place.leaks()


async def _call_and_kill(
    daemon: Daemon, c: Client, method: str, params: dict[str, Any], stage: str
) -> None:
    """Start a lifecycle call and kill -9 the daemon when it reports ``stage``."""
    reached = asyncio.Event()

    def on_progress(method: str, p: dict[str, Any]) -> None:
        if p.get("stage") == stage:
            reached.set()

    call = asyncio.ensure_future(c.call(method, params, on_notification=on_progress))
    await asyncio.wait_for(reached.wait(), 60)
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    with pytest.raises(ClientError, match=r"closed the connection|failed"):
        await call
    await c.close()


@pytest.mark.parametrize(
    ("method", "stage"),
    [
        ("sandbox.create", "boot"),
        ("sandbox.pause", "ingest"),
        ("sandbox.resume", "snapshot_load"),
        ("template.create", "flatten"),
    ],
)
async def test_kill9_during_lifecycle_call(
    daemon: Daemon, place: Any, method: str, stage: str
) -> None:
    daemon.start()
    c = await daemon.client()
    sid = None
    if method == "sandbox.create":
        params: dict[str, Any] = {"image": "base", "memory_mib": 64}
    else:
        sid = (await c.call("sandbox.create", {"image": "base", "memory_mib": 64}))["id"]
        await c.call("sandbox.files.write", {"id": sid, "path": "/root/k", "data": b64(b"K")})
        await c.call("sandbox.pause", {"id": sid})
        if method in ("sandbox.pause", "template.create"):
            await c.call("sandbox.resume", {"id": sid})
        params = {"id": sid} if method != "template.create" else {"name": "tk", "sandbox_id": sid}
    await _call_and_kill(daemon, c, method, params, stage)

    daemon.start()
    c = await daemon.client()
    listed = (await c.call("sandbox.list"))["sandboxes"]
    if sid is None:
        assert listed == [], "an unfinished create is removed"
    else:
        (got,) = listed
        if method == "sandbox.pause":
            # Killed before the memory was committed: the pause is undone, nothing lost.
            assert got["state"] == "running" and got["error"] is None, got
            await c.call("sandbox.pause", {"id": sid})
        else:
            assert got["state"] == "paused", got
        # Paused by the template call itself (cleanly), else recovered with a note.
        assert got["error"] or method in ("template.create", "sandbox.pause"), got
        assert (await c.call("template.list"))["templates"] == []
        assert not list((place.state_dir / "templates").glob(".*")), "no half-built template"
        await c.call("sandbox.resume", {"id": sid})
        read = await c.call("sandbox.files.read", {"id": sid, "path": "/root/k"})
        assert base64.b64decode(read["data"]) == b"K"
        await c.call("sandbox.destroy", {"id": sid})
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0
    assert not place.leaks()


async def test_wrennctl_sandbox_commands(client: Client, daemon: Daemon) -> None:
    wrennctl = Path(sys.executable).parent / "wrennctl"

    async def ctl(*args: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            str(wrennctl),
            "--socket",
            str(daemon.socket),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(stdin)
        assert proc.returncode is not None
        return proc.returncode, out, err

    rc, out, err = await ctl(
        "--json", "sandbox", "create", "base", "--memory-mib", "64", "--meta", "k=v"
    )
    assert rc == 0, err
    sid = json.loads(out)["id"]
    rc, out, err = await ctl("sandbox", "exec", sid, "--", "sh", "-c", "echo hi; exit 4")
    assert (rc, out) == (4, b"hi\n")
    rc, out, err = await ctl("sandbox", "write", sid, "/root/w", stdin=b"\x00bin\xff")
    assert rc == 0, err
    rc, out, err = await ctl("sandbox", "pause", sid)
    assert rc == 0, err
    rc, out, err = await ctl("sandbox", "exec", sid, "--", "true")
    assert rc == 11 and b"paused" in err  # wrong_state
    rc, out, err = await ctl("sandbox", "resume", sid)
    assert rc == 0, err
    rc, out, err = await ctl("sandbox", "read", sid, "/root/w")
    assert (rc, out) == (0, b"\x00bin\xff")
    rc, out, err = await ctl("sandbox", "list")
    assert rc == 0 and sid.encode() in out and b"running" in out
    rc, out, err = await ctl("template", "create", "wt", sid)
    assert rc == 0, err
    rc, out, err = await ctl("--json", "sandbox", "clone", "wt")
    assert rc == 0, err
    clone = json.loads(out)["id"]
    rc, out, err = await ctl("template", "list")
    assert rc == 0 and b"wt" in out, err
    rc, out, err = await ctl("template", "delete", "wt")
    assert rc == 12 and clone.encode() in err  # template_in_use names the clone
    rc, out, err = await ctl("sandbox", "destroy", clone)
    assert rc == 0, err
    rc, out, err = await ctl("template", "delete", "wt")
    assert rc == 0, err
    rc, out, err = await ctl("sandbox", "destroy", sid)
    assert rc == 0, err
    rc, out, err = await ctl("sandbox", "get", sid)
    assert rc == 10, err
    rc, out, err = await ctl("image", "list")
    assert rc == 0 and b"base" in out, err
    rc, out, err = await ctl("image", "delete", "nope")
    assert rc == 16, err  # not_found


async def test_templates_through_the_api(client: Client) -> None:
    src = (await client.call("sandbox.create", {"image": "base", "memory_mib": 64}))["id"]
    await client.call("sandbox.files.write", {"id": src, "path": "/root/t", "data": b64(b"T")})
    stages: list[str] = []
    made = await client.call(
        "template.create",
        {"name": "api-t", "sandbox_id": src},
        on_notification=lambda m, p: stages.append(p["stage"]),
    )
    assert made["name"] == "api-t" and "flatten" in stages and "ingest" in stages
    clone = (await client.call("sandbox.create", {"template": "api-t"}))["id"]
    read = await client.call("sandbox.files.read", {"id": clone, "path": "/root/t"})
    assert base64.b64decode(read["data"]) == b"T"
    got = await client.call("template.get", {"name": "api-t"})
    assert got["sandboxes"] == [clone] and got["memory_mib"] == 64
    with pytest.raises(RemoteError) as in_use:
        await client.call("template.delete", {"name": "api-t"})
    assert in_use.value.type == "template_in_use" and in_use.value.data["sandboxes"] == [clone]
    with pytest.raises(RemoteError) as mismatch:
        await client.call("sandbox.create", {"template": "api-t", "memory_mib": 128})
    assert mismatch.value.type == "invalid_params" and "memory_mib=64" in mismatch.value.message
    with pytest.raises(RemoteError) as both:
        await client.call("sandbox.create", {"template": "api-t", "image": "base"})
    assert both.value.type == "invalid_params"
    await client.call("sandbox.destroy", {"id": clone})
    await client.call("template.delete", {"name": "api-t"})
    with pytest.raises(RemoteError) as gone:
        await client.call("template.get", {"name": "api-t"})
    assert gone.value.type == "not_found"


def test_a_storage_backend_that_cannot_work_stops_the_start(daemon: Daemon) -> None:
    daemon.start(WRENND_STORAGE_BACKEND="devicemapper")
    assert daemon.proc is not None
    assert daemon.proc.wait(30) == 1
    daemon.proc = None
    text = daemon.log.read_text()
    assert "cannot start" in text and "devicemapper" in text
    assert not daemon.socket.exists()


async def test_background_processes(client: Client) -> None:
    sid = (await client.call("sandbox.create", {"image": "base", "memory_mib": 64}))["id"]
    started = await client.call(
        "sandbox.process.start", {"id": sid, "shell": "echo started; exec sleep 60"}
    )
    proc = started["id"]
    listed = (await client.call("sandbox.process.list", {"id": sid}))["processes"]
    assert [p["id"] for p in listed if p["running"]] == [proc]
    chunks: list[bytes] = []
    for _ in range(50):
        chunks.clear()
        await client.call(
            "sandbox.process.output",
            {"id": sid, "process": proc},
            on_notification=lambda m, p: chunks.append(base64.b64decode(p["data"])),
        )
        if b"".join(chunks):
            break
        await asyncio.sleep(0.1)
    assert b"".join(chunks) == b"started\n"  # output is bytes, base64 on the wire
    await client.call("sandbox.process.signal", {"id": sid, "process": proc, "signal": 15})
    for _ in range(50):
        got = await client.call("sandbox.process.get", {"id": sid, "process": proc})
        if not got["running"]:
            break
        await asyncio.sleep(0.1)
    assert not got["running"] and got["signal"] == 15
    await client.call("sandbox.destroy", {"id": sid})
