"""Issue 20 against a real daemon: private state whatever the umask, a clean SIGTERM with
timeouts armed, and hostile image paths that must not stall the daemon."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import os
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.sandbox.running_daemon import Daemon
from wrennd import permissions
from wrennd.guest.protocol import CommandSpec
from wrennd.rpc.client import RemoteError
from wrennd.sandbox.errors import LifecycleError, SandboxNotFound
from wrennd.sandbox.recovery import vmms_using
from wrennd_sim.fcsim.control import ControlClient
from wrennd_sim.inproc import InProcess

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd]


SECRET = b"only root in the guest may read this\n"


def _layer_files(state_dir: Path, sid: str) -> list[Path]:
    return [p for p in (state_dir / "sandboxes" / sid).rglob("*") if p.is_file()]


async def test_state_is_private_under_umask_000(daemon: Daemon, place: Any) -> None:
    place.state_dir.chmod(0o755)  # as a state dir made without StateDirectoryMode would be
    daemon.start("--fix-permissions", umask=0)
    c = await daemon.client()
    sid = (await c.call("sandbox.create", {"image": "base", "memory_mib": 64}))["id"]
    data = base64.b64encode(SECRET).decode()
    await c.call(
        "sandbox.files.write", {"id": sid, "path": "/root/secret", "data": data, "mode": 0o600}
    )
    await c.call("sandbox.pause", {"id": sid})
    await c.call("sandbox.resume", {"id": sid})
    await c.call("sandbox.pause", {"id": sid})
    assert permissions.loose(place.state_dir) == [], "everything in state_dir is private"
    assert "modes tightened" in daemon.log.read_text()

    # What the issue did: debugfs as nobody on the sandbox's layer.
    for layer in _layer_files(place.state_dir, sid):
        argv = ["runuser", "-u", "nobody", "--", "debugfs", "-R", "cat /root/secret", str(layer)]
        out = await asyncio.to_thread(subprocess.run, argv, capture_output=True)
        assert SECRET not in out.stdout, layer
    await c.call("sandbox.destroy", {"id": sid})
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0


async def test_sigterm_with_timeouts_is_quick_and_clean(daemon: Daemon, place: Any) -> None:
    daemon.start(WRENND_SHUTDOWN_TIMEOUT="30")
    c = await daemon.client()
    sid = (await c.call("sandbox.create", {"image": "base", "memory_mib": 64, "timeout_s": 3600}))[
        "id"
    ]
    await c.close()
    t0 = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    took = time.monotonic() - t0
    assert took < 15, f"SIGTERM took {took:.1f} s of the 30 s deadline"
    assert "clean=true" in daemon.log.read_text().lower().replace(" ", "")
    daemon.start()
    c = await daemon.client()
    assert (await c.call("sandbox.get", {"id": sid}))["state"] == "paused"
    await c.call("sandbox.destroy", {"id": sid})
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0


async def test_fifo_registrations_do_not_stall_the_daemon(daemon: Daemon, place: Any) -> None:
    fifo = place.run_dir / "fifo"
    os.mkfifo(fifo)
    daemon.start()
    c = await daemon.client()
    sid = (await c.call("sandbox.create", {"image": "base", "memory_mib": 64}))["id"]
    calls = [c.call("image.register", {"name": f"f{i}", "path": str(fifo)}) for i in range(8)]
    answers = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
    assert all(isinstance(a, RemoteError) and a.code == -32602 for a in answers), answers
    t0 = time.monotonic()
    await c.call("image.list")
    assert time.monotonic() - t0 < 1
    t0 = time.monotonic()
    await c.call("sandbox.pause", {"id": sid})
    assert time.monotonic() - t0 < 5
    await c.call("sandbox.destroy", {"id": sid})
    await c.close()
    t0 = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 10


async def test_a_killed_vmm_leaves_its_slot_usable(daemon: Daemon, place: Any) -> None:
    daemon.start()
    c = await daemon.client()
    a = await c.call("sandbox.create", {"image": "base", "memory_mib": 64})
    os.kill(a["vmm"]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (await c.call("sandbox.get", {"id": a["id"]}))["state"] != "error":
        assert time.monotonic() < deadline, "the VMM's death was not noticed"
        await asyncio.sleep(0.1)
    # The same slot at once (the lowest free one), then again after a restart.
    b = await c.call("sandbox.create", {"image": "base", "memory_mib": 64})
    assert b["state"] == "running"
    os.kill(b["vmm"]["pid"], signal.SIGKILL)
    await c.close()
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    daemon.start()
    c = await daemon.client()
    again = await c.call("sandbox.create", {"image": "base", "memory_mib": 64})
    assert again["state"] == "running"
    for sb in (await c.call("sandbox.list"))["sandboxes"]:
        await c.call("sandbox.destroy", {"id": sb["id"]})
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0
    assert not place.leaks()


async def test_damaged_state_is_reported_and_destroyable(daemon: Daemon, place: Any) -> None:
    daemon.start()
    c = await daemon.client()
    ids = []
    for n in range(4):
        made = await c.call("sandbox.create", {"image": "base", "memory_mib": 64})
        sid = made["id"]
        ctl = ControlClient(Path(made["vmm"]["control_socket"]))
        try:  # memory that a generation file must hold (all-zero memory needs none)
            await ctl.call("dirty", fraction=0.05, seed=n)
        finally:
            await ctl.close()
        await c.call("sandbox.pause", {"id": sid})
        ids.append(sid)
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0
    truncated, bad_header, bad_prefetch, no_generation = ids
    sandboxes = place.state_dir / "sandboxes"
    record = sandboxes / truncated / "state.json"
    record.write_bytes(record.read_bytes()[:40])
    header = sandboxes / bad_header / "snapshot" / "memory.header"
    raw = bytearray(header.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    header.write_bytes(bytes(raw))
    (sandboxes / bad_prefetch / "snapshot" / "memory.prefetch").write_bytes(b"\x07garbage" * 9)
    links = sandboxes / no_generation / "snapshot" / "memfiles"
    for link in links.iterdir():
        (place.state_dir / "memfiles" / link.name).unlink(missing_ok=True)
        link.unlink()

    daemon.start()
    c = await daemon.client()
    listed = {s["id"]: s for s in (await c.call("sandbox.list"))["sandboxes"]}
    assert listed[truncated]["state"] == "damaged" and "state.json" in listed[truncated]["error"]
    assert (await c.call("sandbox.get", {"id": truncated}))["state"] == "damaged"
    with pytest.raises(RemoteError) as wrong:
        await c.call("sandbox.resume", {"id": truncated})
    assert wrong.value.type == "wrong_state"
    for sid, file in ((bad_header, "memory.header"), (no_generation, "")):
        with pytest.raises(RemoteError) as corrupt:
            await c.call("sandbox.resume", {"id": sid})
        assert corrupt.value.type == "snapshot_corrupt", corrupt.value
        assert file in (corrupt.value.data.get("file") or ""), corrupt.value.data
        assert (await c.call("sandbox.get", {"id": sid}))["state"] == "paused"
    resumed = await c.call("sandbox.resume", {"id": bad_prefetch})  # only a speed hint
    assert resumed["state"] == "running"
    for sid in ids:
        await c.call("sandbox.destroy", {"id": sid})
    assert (await c.call("sandbox.list"))["sandboxes"] == []
    assert not (sandboxes / truncated).exists(), "destroy removed everything it owned"
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0
    assert not place.leaks()


async def test_a_full_disk_during_pause_is_resource_exhausted(daemon: Daemon, place: Any) -> None:
    store = place.state_dir / "memfiles"
    store.mkdir(exist_ok=True)
    # The generation store on a 1 MiB tmpfs: the first pause's ingest runs out of space.
    await asyncio.to_thread(
        subprocess.run, ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(store)], check=True
    )
    try:
        daemon.start()
        c = await daemon.client()
        made = await c.call("sandbox.create", {"image": "base", "memory_mib": 64})
        sid = made["id"]
        ctl = ControlClient(Path(made["vmm"]["control_socket"]))
        try:  # 16 MiB of data to ingest into 1 MiB
            await ctl.call("dirty", fraction=0.25, seed=1)
        finally:
            await ctl.close()
        with pytest.raises(RemoteError) as full:
            await c.call("sandbox.pause", {"id": sid})
        assert full.value.type == "resource_exhausted", full.value
        assert full.value.data.get("resource") == "disk"
        assert (await c.call("sandbox.get", {"id": sid}))["state"] == "running"
        await c.call("sandbox.destroy", {"id": sid})
        await c.close()
        assert daemon.stop(signal.SIGTERM) == 0
    finally:
        await asyncio.to_thread(subprocess.run, ["umount", str(store)], check=True)


def _killer(api_socket: Path) -> asyncio.Task[int]:
    """SIGKILL the VMM serving ``api_socket`` as soon as it exists; its pid."""

    async def kill() -> int:
        while True:
            for pid in await asyncio.to_thread(vmms_using, api_socket):
                os.kill(pid, signal.SIGKILL)
                return pid
            await asyncio.sleep(0.001)

    return asyncio.ensure_future(kill())


async def test_a_vmm_killed_early_in_resume_is_not_waited_for(manager: InProcess, env: Any) -> None:
    sid = (await manager.create("base", memory_mib=64))["id"]
    await manager.pause(sid)
    api_socket = manager.service.paths(sid).vmm_files.api_socket
    killer: list[asyncio.Task[int]] = []

    async def on_progress(stage: str, done: int, total: int, **facts: int) -> None:
        if stage == "vmm_start":
            killer.append(_killer(api_socket))

    t0 = time.monotonic()
    with pytest.raises(LifecycleError):
        await manager.resume(sid, on_progress)
    took = time.monotonic() - t0
    await asyncio.wait_for(killer[0], 5)
    assert took < 5, f"the failed resume took {took:.1f} s"
    assert manager.get(sid)["state"] == "paused"
    assert (await manager.resume(sid))["state"] == "running"
    await manager.destroy(sid)
    assert not env.leaks()


async def test_destroy_waiting_on_a_failing_create(manager: InProcess, env: Any) -> None:
    """Issue 20 item 7: a destroy that waited for a create that then failed answers
    sandbox_not_found, not an internal KeyError."""
    destroyed: list[asyncio.Future[None]] = []

    async def on_progress(stage: str, done: int, total: int, **facts: int) -> None:
        if stage == "boot":
            (sb,) = [s for s in manager.service.registry if s.record.state.value == "creating"]
            _killer(manager.service.paths(sb.id).vmm_files.api_socket)
            destroyed.append(asyncio.ensure_future(manager.destroy(sb.id)))

    with pytest.raises(LifecycleError):
        await manager.create("base", memory_mib=64, progress=on_progress)
    with pytest.raises(SandboxNotFound):
        await asyncio.wait_for(destroyed[0], 30)
    assert manager.list() == []
    assert not env.leaks()


def _logged_at(log: str, needle: str) -> datetime.datetime:
    """The ts= of the last log line with ``needle``."""
    line = [ln for ln in log.splitlines() if needle in ln][-1]
    stamp = line.split()[0].removeprefix("ts=").replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(stamp)


async def test_a_shutdown_cut_off_at_its_deadline_says_so(daemon: Daemon, place: Any) -> None:
    daemon.start(WRENND_SHUTDOWN_TIMEOUT="3")
    c = await daemon.client()
    made = await c.call("sandbox.create", {"image": "base", "memory_mib": 64})
    await c.close()
    vmm = made["vmm"]["pid"]
    os.kill(vmm, signal.SIGSTOP)  # its pause (PATCH /vm) now waits for an answer
    try:
        assert daemon.stop(signal.SIGTERM) == 1, "a cut-off shutdown is not a clean one"
        text = daemon.log.read_text()
        assert "clean=False" in text
        # Cut at its 3 s deadline, not the default 60 s: measured on the daemon's own
        # clock (its log), as what follows the cut takes long on a loaded machine.
        began, cut = _logged_at(text, "msg=stopping"), _logged_at(text, "ran out of time")
        assert 2.5 < (cut - began).total_seconds() < 10
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(vmm, signal.SIGCONT)
    daemon.start()  # recovery stops whatever the cut-off pause left
    c = await daemon.client()
    for sb in (await c.call("sandbox.list"))["sandboxes"]:
        await c.call("sandbox.destroy", {"id": sb["id"]})
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0
    assert not place.leaks()


async def test_a_guest_cannot_touch_the_hosts_device_nodes(manager: InProcess, env: Any) -> None:
    """Found by the hostile-input sweep: fcsim's guest mounted devtmpfs, which is the host's
    (one kernel), so files.write of /dev/zero replaced the host's /dev/zero."""
    sid = (await manager.create("base", memory_mib=64))["id"]
    guest = manager.guest(sid)
    await guest.write_file("/dev/zero", b"hello")
    await guest.remove("/dev/full")
    for node in ("/dev/zero", "/dev/null"):
        assert stat.S_ISCHR(os.stat(node).st_mode), f"the host's {node} was replaced"
    result = await manager.exec(sid, CommandSpec(shell="head -c 3 /dev/urandom | wc -c"))
    assert result.ok and result.stdout.strip() == b"3"
    await manager.destroy(sid)
    assert not env.leaks()
