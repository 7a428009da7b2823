"""The hand-over through a service manager's fd store: a sandbox still filling survives
kill -9 of the daemon, and a page its guest gave back stays zeros.

The daemon runs as systemd would run it (wrennd_sim/fdstore.py owns
NOTIFY_SOCKET, keeps what FDSTORE=1 sends, and restarts the daemon with the kept fds
in LISTEN_FDS/LISTEN_FDNAMES).  The fill is slowed (uffd_fill_rate_bytes) so that
the engines are still filling when the daemon is killed.
"""

from __future__ import annotations

import asyncio
import base64
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.sandbox.running_daemon import Daemon
from wrennd.rpc.client import Client, RemoteError
from wrennd_sim.fcsim.control import ControlClient
from wrennd_sim.fdstore import FdStore

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd]
MiB = 1 << 20
MARK_AT, MARK_LEN = 40 * MiB, 256 * 1024  # a range the guest fills, then gives back
SLOW_FILL = str(1 * MiB)  # bytes/s: a fill of tens of MiB outlasts the daemon's restart


@pytest.fixture
def store(place: Any) -> Iterator[FdStore]:
    s = FdStore(place.run_dir / "notify.sock")
    yield s
    s.close()


@pytest.fixture
def daemon(place: Any, store: FdStore) -> Iterator[Daemon]:
    d = Daemon(place)
    d.fd_store = store
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.stop(signal.SIGTERM)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def control(got: dict[str, Any]) -> ControlClient:
    return ControlClient(Path(got["vmm"]["control_socket"]))


async def _filling_sandbox(c: Client, dirty: float) -> tuple[str, str]:
    """A sandbox paused with ``dirty`` of its memory written and resumed: its engine is
    filling.  Returns its id and the checksum its memory has with the mark range
    zeroed (at the pause that range holds 0xab)."""
    sid = (await c.call("sandbox.create", {"image": "base", "memory_mib": 128}))["id"]
    await c.call("sandbox.files.write", {"id": sid, "path": "/root/before", "data": b64(b"B")})
    ctl = control(await c.call("sandbox.get", {"id": sid}))
    await ctl.call("dirty", fraction=dirty, seed=len(sid))
    await ctl.call("write", offset=MARK_AT, data=b64(bytes(MARK_LEN)))
    want = await ctl.checksum()
    await ctl.call("write", offset=MARK_AT, data=b64(b"\xab" * MARK_LEN))
    await ctl.close()
    await c.call("sandbox.pause", {"id": sid})
    await c.call("sandbox.resume", {"id": sid})
    return sid, want


async def _engine(c: Client, sid: str) -> dict[str, Any]:
    got = await c.call("sandbox.get", {"id": sid})
    assert got["state"] == "running", got
    engine: dict[str, Any] = got["engine"]
    return engine


async def test_kill9_hands_filling_engines_over(daemon: Daemon, store: FdStore, place: Any) -> None:
    """Two sandboxes just resumed, their engines still filling: kill -9, restart; both keep
    their VMM and their memory; a page given back before the crash reads zeros after it."""
    daemon.start(WRENND_UFFD_FILL_RATE_BYTES=SLOW_FILL)
    c = await daemon.client()
    (a, want_a), (b, want_b) = [await _filling_sandbox(c, 0.3) for _ in range(2)]
    pids = {}
    for sid in (a, b):
        engine = await _engine(c, sid)
        assert engine["state"] == "filling" and engine["percent"] < 100, engine
        pids[sid] = (await c.call("sandbox.get", {"id": sid}))["vmm"]["pid"]
    assert {f"uffd-{a}", f"uffdpeer-{a}", f"uffd-{b}", f"uffdpeer-{b}"} <= store.names()
    ctl_a = control(await c.call("sandbox.get", {"id": a}))
    await ctl_a.call("discard", offset=MARK_AT, length=MARK_LEN)  # REMOVE to the engine
    assert (await _engine(c, a))["state"] == "filling"
    await c.close()
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL

    daemon.start(WRENND_UFFD_FILL_RATE_BYTES=SLOW_FILL)
    c = await daemon.client()
    for sid in (a, b):
        got = await c.call("sandbox.get", {"id": sid})
        assert got["state"] == "running" and got["vmm"]["pid"] == pids[sid], got
        assert got["recovered_from"] is None and got["engine"]["state"] != "detached", got
    # The given-back range: zeros from the new engine, never the snapshot's 0xab; every
    # other page the snapshot's.
    read = await ctl_a.call("read", offset=MARK_AT, length=MARK_LEN)
    assert base64.b64decode(read["data"]) == bytes(MARK_LEN)
    assert await ctl_a.checksum() == want_a
    await ctl_a.close()
    ctl_b = control(await c.call("sandbox.get", {"id": b}))
    read = await ctl_b.call("read", offset=MARK_AT, length=MARK_LEN)
    assert base64.b64decode(read["data"]) == b"\xab" * MARK_LEN  # b gave nothing back
    await ctl_b.call("write", offset=MARK_AT, data=b64(bytes(MARK_LEN)))
    assert await ctl_b.checksum() == want_b
    await ctl_b.close()
    for sid in (a, b):
        ran = await c.call("sandbox.exec", {"id": sid, "shell": "cat /root/before"})
        assert base64.b64decode(ran["stdout"]) == b"B"
    # The new engines fill and detach, and drop their fds from the store.
    deadline = time.monotonic() + 240
    while [(await _engine(c, sid))["state"] for sid in (a, b)] != ["detached"] * 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.5)
    assert not {n for n in store.names() if n.endswith((a, b))}, store.names()
    # Pause and resume still work on a handed-over sandbox; b's memory is intact.
    await c.call("sandbox.pause", {"id": b})
    await c.call("sandbox.resume", {"id": b})
    ctl_b = control(await c.call("sandbox.get", {"id": b}))
    assert await ctl_b.checksum() == want_b
    await ctl_b.close()
    for sid in (a, b):
        await c.call("sandbox.destroy", {"id": sid})
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0
    assert store.names() == set()
    assert not place.leaks()


async def test_kill9_without_hand_over_rolls_back(
    daemon: Daemon, store: FdStore, place: Any
) -> None:
    """uffd_handover = false: nothing goes to the store, and a sandbox whose engine was
    filling goes back to its last snapshot with that snapshot's disk."""
    env = {"WRENND_UFFD_FILL_RATE_BYTES": SLOW_FILL, "WRENND_UFFD_HANDOVER": "false"}
    daemon.start(**env)
    c = await daemon.client()
    sid, _ = await _filling_sandbox(c, 0.2)
    assert (await _engine(c, sid))["state"] == "filling"
    await c.call("sandbox.files.write", {"id": sid, "path": "/root/after", "data": b64(b"A")})
    await c.call("sandbox.exec", {"id": sid, "shell": "sync"})
    assert store.names() == set()
    await c.close()
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL

    daemon.start(**env)
    c = await daemon.client()
    got = await c.call("sandbox.get", {"id": sid})
    assert got["state"] == "paused" and got["recovered_from"]["generation"] == 0, got
    await c.call("sandbox.resume", {"id": sid})
    ran = await c.call("sandbox.exec", {"id": sid, "shell": "cat /root/before"})
    assert base64.b64decode(ran["stdout"]) == b"B"
    with pytest.raises(RemoteError):
        await c.call("sandbox.files.read", {"id": sid, "path": "/root/after"})
    await c.call("sandbox.destroy", {"id": sid})
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0
    assert not place.leaks()
