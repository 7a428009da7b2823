"""kill -9 of the daemon at random points of create, resume, pause and template creation.

Each trial starts one lifecycle call, kills the daemon after a random delay (the
call may have finished: that is a point too), restarts it and checks that
nothing is left that no record owns: every process naming the run directory is
a running sandbox's VMM (or its guest), every network namespace and loop device
belongs to a running sandbox, no cgroup of a dead fcsim is left, no half-built
template; every layer that no VM is using (``rootfs.ext4`` of a paused or failed
sandbox, the layers kept with snapshots, templates' images) passes
``e2fsck -fn``.  At the end every sandbox is paused and every layer checked.

CI runs ``CRASH_TRIALS`` = 6 (a couple of minutes); the soak is
``CRASH_TRIALS=30 make pytest PYTEST_ARGS=tests/integration/sandbox/test_sandbox_crash_trials.py``
(``CRASH_SEED`` picks the delays).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.sandbox.conftest import _dead_fcsim_cgroups
from tests.integration.sandbox.running_daemon import Daemon
from wrennd.network import nsutil
from wrennd.rpc.client import Client, ClientError, RemoteError
from wrennd.storage import loopdev

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd]
TRIALS = int(os.environ.get("CRASH_TRIALS", "6"))
SEED = int(os.environ.get("CRASH_SEED", "13"))
# The longest a kill waits after the call starts, per call (seconds, loaded host).
LIMITS = {
    "sandbox.create": 4.0,
    "sandbox.resume": 3.0,
    "sandbox.pause": 3.0,
    "template.create": 5.0,
}
MAX_SANDBOXES = 3


async def _sandboxes(c: Client) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = (await c.call("sandbox.list"))["sandboxes"]
    return listed


async def _one_in(c: Client, state: str) -> str:
    """A sandbox in ``state`` (running or paused), made if there is none."""
    for sb in await _sandboxes(c):
        if sb["state"] == state:
            return str(sb["id"])
    sid = str((await c.call("sandbox.create", {"image": "base", "memory_mib": 64}))["id"])
    if state == "paused":
        await c.call("sandbox.pause", {"id": sid})
    return sid


async def _prepare(c: Client, method: str, trial: int) -> dict[str, Any]:
    listed = await _sandboxes(c)
    for sb in listed[: max(0, len(listed) - MAX_SANDBOXES)]:  # keep the host small
        await c.call("sandbox.destroy", {"id": sb["id"]})
    for sb in listed:  # a sandbox in error is destroyed: it can only be
        if sb["state"] == "error":
            with contextlib.suppress(RemoteError):
                await c.call("sandbox.destroy", {"id": sb["id"]})
    if method == "sandbox.create":
        return {"image": "base", "memory_mib": 64}
    if method == "sandbox.resume":
        return {"id": await _one_in(c, "paused")}
    sid = await _one_in(c, "running")
    return {"id": sid} if method == "sandbox.pause" else {"name": f"t{trial}", "sandbox_id": sid}


def _fsck(image: Path) -> None:
    done = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    if done.returncode != 0 and not image.exists():
        return  # replaced meanwhile: a pause's kept disk is rotated after its answer
    assert done.returncode == 0, f"{image}: {done.stdout}{done.stderr}"


def _layers(place: Any, idle: set[str]) -> list[Path]:
    """Every layer no VM uses: idle sandboxes' layers, kept snapshot layers, templates'."""
    root = place.state_dir
    found = [root / "sandboxes" / sid / "rootfs.ext4" for sid in idle]
    found += sorted((root / "sandboxes").glob("*/snapshot/rootfs.g*.layer"))
    found += sorted(p for p in (root / "templates").glob("*/*") if p.suffix == ".ext4")
    return [p for p in found if p.exists()]


def _processes_naming(path: Path) -> list[int]:
    needle = os.fsencode(str(path))
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
    return found


def _descends(pid: int, roots: set[int]) -> bool:
    while pid > 1:
        if pid in roots:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


async def _check_owned(c: Client, place: Any, cgroups_before: set[str]) -> None:
    listed = await _sandboxes(c)
    states = {sb["id"]: sb["state"] for sb in listed}
    assert set(states.values()) <= {"running", "paused", "error"}, states
    running = {sid for sid, st in states.items() if st == "running"}
    vmms = {(await c.call("sandbox.get", {"id": sid}))["vmm"]["pid"] for sid in running}
    for pid in _processes_naming(place.run_dir):
        assert _descends(pid, vmms), f"unowned process {pid}: {states}"
    namespaces = [
        n
        for n in nsutil.list_named()
        if n.startswith(place.bed.prefix) and n not in (place.bed.host, place.bed.outside)
    ]
    # The sandbox's namespace, and fcsim's guest namespace beside it (``<name>-g``).
    sandbox_ns = {n for n in namespaces if not n.endswith("-g")}
    assert len(sandbox_ns) == len(running), (namespaces, states)
    assert {n.removesuffix("-g") for n in namespaces} == sandbox_ns, (namespaces, states)
    for b in loopdev.bound():
        if str(place.state_dir) in b.backing_file or f"/{place.state_dir.name}/" in b.backing_file:
            assert any(sid in b.backing_file for sid in running), (b.backing_file, states)
    assert _dead_fcsim_cgroups() - cgroups_before == set()
    assert not list((place.state_dir / "templates").glob(".*")), "a half-built template"
    for layer in _layers(place, set(states) - running):
        _fsck(layer)


@pytest.mark.timeout(120 + 40 * TRIALS)
async def test_kill9_at_random_points(daemon: Daemon, place: Any) -> None:
    rng = random.Random(SEED)
    cgroups_before = _dead_fcsim_cgroups()
    daemon.start()
    c = await daemon.client()
    methods = list(LIMITS)
    interrupted = 0
    for trial in range(TRIALS):
        method = methods[trial % len(methods)]
        params = await _prepare(c, method, trial)
        call = asyncio.ensure_future(c.call(method, params))
        await asyncio.sleep(rng.uniform(0, LIMITS[method]))
        assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
        try:
            await call
        except ClientError:  # the kill came first: the call never answered
            interrupted += 1
        except RemoteError:
            pass
        await c.close()
        daemon.start()
        c = await daemon.client()
        await _check_owned(c, place, cgroups_before)
    print(f"crash trials: {TRIALS}, calls interrupted by the kill: {interrupted}")
    assert interrupted > 0, "every kill came after its call: no crash point was tested"
    for sb in await _sandboxes(c):
        if sb["state"] == "running":
            await c.call("sandbox.pause", {"id": sb["id"]})
    listed = await _sandboxes(c)
    for layer in _layers(place, {sb["id"] for sb in listed}):
        _fsck(layer)
    for sb in listed:
        await c.call("sandbox.destroy", {"id": sb["id"]})
    for t in (await c.call("template.list"))["templates"]:
        await c.call("template.delete", {"name": t["name"]})
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0
    assert not place.leaks()
