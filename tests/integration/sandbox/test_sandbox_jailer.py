"""The jailer path for real, under fcsim: ``use_jailer = true`` end to end.

Every VMM is started by ``fcsim-jailer`` (the jailer's command line and steps):
it runs as the jail's uid in its chroot, in the jail's cgroup and the
sandbox's network namespace, sees nothing outside its chroot, and after
pause, destroy or a daemon crash nothing of the jail is left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.sandbox.conftest import Env, Place
from tests.integration.sandbox.test_sandbox_daemon import Daemon
from tests.polling import wait_for
from wrennd import features
from wrennd.guest.protocol import CommandSpec
from wrennd.network.manager import NetworkManager
from wrennd.network.plan import Naming
from wrennd.sandbox.environment import HostConfig, VmmChoice
from wrennd.sandbox.errors import VmmFailed
from wrennd.sandbox.jail import JailSettings
from wrennd.sandbox.sharing import KsmSettings
from wrennd.storage.aio import open_storage
from wrennd.vm import cgroup, ksm
from wrennd_sim.fcsim.control import ControlClient
from wrennd_sim.fcsim.harness import require_fcsim
from wrennd_sim.inproc import InProcess

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd]

UID = GID = 64123
MEM_MIB = 64


def jail_settings(place: Place) -> JailSettings:
    """Chroots on the state dir's filesystem (files are hard-linked in), reached through
    a short symlink: the API socket's path must fit AF_UNIX's 107 bytes."""
    sim = require_fcsim()
    base = Path(f"{place.run_dir}-jail")
    if not base.is_symlink():
        (place.state_dir / "jail").mkdir(exist_ok=True)
        base.symlink_to(place.state_dir / "jail")
    return JailSettings(
        jailer_bin=sim.parent / "fcsim-jailer",
        exec_file=sim.parent / "fcsim-firecracker",
        uid=UID,
        gid=GID,
        chroot_base=base,
        parent_cgroup=f"wrennd-test-{place.prefix}",
    )


def jail_leftovers(jail: JailSettings) -> list[str]:
    """Chroots, cgroups and jailed processes of this test's jails."""
    base = jail.chroot_base / jail.exec_file.name
    found = [f"chroot {p}" for p in base.iterdir()] if base.is_dir() else []
    root = cgroup.cgroup2_root()
    parent = None if root is None else root / jail.parent_cgroup
    if parent is not None and parent.is_dir():
        found += [f"cgroup {p}" for p in parent.iterdir() if p.is_dir()]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                any(a.startswith(b"--chroot-base-dir") for a in argv)
                and os.fsencode(str(jail.chroot_base)) in argv
            ):
                found.append(f"jailer {proc.name}")
    return found


def remove_parent_cgroup(jail: JailSettings) -> None:
    root = cgroup.cgroup2_root()
    if root is not None:
        cgroup.remove(root / jail.parent_cgroup)
    jail.chroot_base.unlink(missing_ok=True)


@pytest.fixture
async def jailed(place: Place, request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    """The manager with use_jailer; ``parametrize("jailed", [exec file], indirect=True)``
    gives the jailer another exec file."""
    jail = jail_settings(place)
    if hasattr(request, "param"):
        jail = dataclasses.replace(jail, exec_file=Path(request.param))
    cfg = HostConfig(
        state_dir=place.state_dir,
        run_dir=place.run_dir,
        vmm=VmmChoice(require_fcsim(), True, "tests run fcsim"),
        kernel=place.kernel,
        max_generations=4,
        boot_timeout=30,
        host_netns=place.bed.host_path,
        jail=jail,
        # Clones' VMMs through wrennd-merge-exec, then the jailer (where the kernel can).
        ksm=KsmSettings("clones" if features.ksm().available else "off"),
    )
    network = NetworkManager(
        naming=Naming(prefix=place.prefix, table=place.table),
        host_netns=place.bed.host_path,
        tap_owner=UID,  # as SandboxService.from_settings does with use_jailer
    )
    storage = await open_storage("reflink", place.state_dir)
    try:
        async with InProcess.started(cfg, storage, network) as mgr:
            yield Env(**place.__dict__, manager=mgr)
    finally:
        remove_parent_cgroup(jail)


def uids(pid: int) -> list[int]:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x[:4] == "Uid:")
    return [int(u) for u in line.split()[1:]]


def tap_owner(netns: str, tap: str) -> int:
    argv = ["ip", "netns", "exec", netns, "cat", f"/sys/class/net/{tap}/owner"]
    return int(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def assert_jailed(pid: int, jail: JailSettings, sandbox_id: str, netns: Path, secret: Path) -> None:
    """The VMM process runs as the jail user, in its chroot, cgroup and namespace."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    assert uids(pid) == [UID] * 4 and status["Gid"].split() == [str(GID)] * 4
    chroot = jail.root_of(sandbox_id)
    root = os.stat(f"/proc/{pid}/root")
    assert (root.st_dev, root.st_ino) == (chroot.stat().st_dev, chroot.stat().st_ino)
    assert Path(f"/proc/{pid}/root/run/api.sock").exists(), "its own API socket is in its root"
    # A file outside the jail (here: in the state dir beside it) is not in its view.
    assert secret.exists()
    assert not Path(f"/proc/{pid}/root/{str(secret).lstrip('/')}").exists()
    assert not Path(f"/proc/{pid}/root/{secret.name}").exists()
    line = next(x for x in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if x[:3] == "0::")
    assert line == f"0::/{jail.parent_cgroup}/{sandbox_id}"
    root_cg = cgroup.cgroup2_root()
    assert root_cg is not None
    want = cgroup.limits(1, MEM_MIB, cgroup.controllers(root_cg))
    assert want, "this host's cgroup2 offers no controller for a limit"
    for key, value in want.items():
        got = (root_cg / jail.parent_cgroup / sandbox_id / key).read_text().split()
        assert got == value.split(), key
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == netns.stat().st_ino


async def test_jailed_create_exec_pause_resume_clone_destroy(jailed: Env) -> None:
    mgr, jail = jailed.mgr, jail_settings(jailed)
    secret = jailed.state_dir / "outside-the-jail"
    secret.write_text("not for the VMM\n")
    info = await mgr.create("base", memory_mib=MEM_MIB)
    sid = info["id"]
    live = mgr.service.registry.get(sid).live
    assert live is not None and live.net is not None
    assert_jailed(info["vmm"]["pid"], jail, sid, live.net.netns_path, secret)
    assert tap_owner(live.net.netns, live.net.tap) == UID, "the jailed VMM may attach to its TAP"
    rootfs = jail.root_of(sid) / "rootfs"
    assert rootfs.stat().st_uid == UID and rootfs.stat().st_nlink == 2, "hard-linked, jail-owned"
    result = await mgr.exec(sid, CommandSpec(shell="echo jailed"))
    assert result.ok and result.stdout == b"jailed\n"
    await mgr.guest(sid).write_file("/root/note", b"kept\n")
    ctl = ControlClient(Path(info["vmm"]["control_socket"]))
    try:
        await ctl.call("dirty", fraction=0.05, seed=1)
        before = await ctl.checksum()
    finally:
        await ctl.close()

    await mgr.pause(sid)
    assert jail_leftovers(jail) == [], "a paused sandbox holds no jail"
    resumed = await mgr.resume(sid)
    live = mgr.service.registry.get(sid).live
    assert live is not None and live.net is not None and live.uffd is not None
    assert live.uffd.peer_pid == resumed["vmm"]["pid"], "the jailed VMM is the UFFD peer"
    assert_jailed(resumed["vmm"]["pid"], jail, sid, live.net.netns_path, secret)
    ctl = ControlClient(Path(resumed["vmm"]["control_socket"]))
    try:
        assert await ctl.checksum() == before, "memory served over UFFD into the jail"
    finally:
        await ctl.close()
    assert await mgr.guest(sid).read_bytes("/root/note") == b"kept\n"

    await mgr.create_template(sid, "jt")
    clone = await mgr.create(template="jt")
    live = mgr.service.registry.get(clone["id"]).live
    assert live is not None and live.net is not None
    assert_jailed(clone["vmm"]["pid"], jail, clone["id"], live.net.netns_path, secret)
    assert await mgr.guest(clone["id"]).read_bytes("/root/note") == b"kept\n"
    if features.ksm().available:  # the KSM mark survives the jailer's exec
        assert ksm.process_stat(clone["vmm"]["pid"])["ksm_merge_any"] is True  # type: ignore[index]
        source = mgr.get(sid)["vmm"]["pid"]  # resumed after the template was taken
        assert ksm.process_stat(source)["ksm_merge_any"] is False  # type: ignore[index]

    for s in (clone["id"], sid):
        await mgr.destroy(s)
    await mgr.delete_template("jt")
    assert jail_leftovers(jail) == []
    assert jailed.leaks() == []


@pytest.mark.parametrize("jailed", ["/nonexistent/firecracker"], indirect=True)
async def test_a_failed_jailed_start_leaves_no_jail(jailed: Env) -> None:
    with pytest.raises(VmmFailed, match="exec-file"):
        await jailed.mgr.create("base", memory_mib=MEM_MIB)
    jail = dataclasses.replace(jail_settings(jailed), exec_file=Path("/nonexistent/firecracker"))
    assert jail_leftovers(jail) == []
    assert jailed.leaks() == []


@pytest.fixture
def jailed_daemon(place: Place) -> Any:
    d = Daemon(place)
    jail = jail_settings(place)
    env = {
        "WRENND_USE_JAILER": "true",
        "WRENND_JAILER_BIN": str(jail.jailer_bin),
        "WRENND_JAIL_UID": str(UID),
        "WRENND_JAIL_GID": str(GID),
        "WRENND_JAIL_CGROUP": jail.parent_cgroup,
        "WRENND_JAIL_CHROOT_BASE": str(jail.chroot_base),
    }
    try:
        yield d, jail, env
    finally:
        if d.proc is not None:
            d.stop(signal.SIGKILL)
        for pid in [int(x.split()[1]) for x in jail_leftovers(jail) if x.startswith("jailer")]:
            os.kill(pid, signal.SIGKILL)
        remove_parent_cgroup(jail)


async def test_daemon_crash_keeps_the_jailed_vmm(jailed_daemon: Any, place: Place) -> None:
    """A jailed VMM outlives kill -9 of the daemon and is adopted (known by its jail's
    ``--id``: its socket path is the same inside every chroot); destroy then removes
    the jail.  A jailed VMM no record can adopt is stopped and its jail removed."""
    daemon, jail, env = jailed_daemon
    daemon.start(**env)
    c = await daemon.client()
    info = await c.call("sandbox.create", {"image": "base", "memory_mib": MEM_MIB})
    sid, pid = info["id"], info["vmm"]["pid"]
    assert uids(pid) == [UID] * 4
    assert (jail.root_of(sid) / "rootfs").exists()
    host = await c.call("host.info")
    assert host["config"]["use_jailer"] is True
    doomed = (await c.call("sandbox.create", {"image": "base", "memory_mib": MEM_MIB}))["id"]
    doomed_pid = (await c.call("sandbox.get", {"id": doomed}))["vmm"]["pid"]
    await c.close()

    daemon.stop(signal.SIGKILL)
    assert alive(pid), "the jailed VMM outlived the daemon"
    # doomed's record says it is being destroyed: the next daemon must not adopt it.
    record = place.state_dir / "sandboxes" / doomed / "state.json"
    record.write_text(record.read_text().replace('"running"', '"stopping"'))
    daemon.start(**env)
    c = await daemon.client()
    got = await c.call("sandbox.get", {"id": sid})
    assert got["state"] == "running" and got["vmm"]["pid"] == pid, got
    ran = await c.call("sandbox.exec", {"id": sid, "shell": "echo jailed", "encoding": "text"})
    assert ran["stdout"] == "jailed\n"
    await wait_for(lambda: not alive(doomed_pid), 10, what="the unowned jailed VMM to stop")
    assert not jail.root_of(doomed).exists()
    await c.call("sandbox.pause", {"id": sid})
    await c.call("sandbox.resume", {"id": sid})
    await c.call("sandbox.destroy", {"id": sid})
    await c.close()
    daemon.stop(signal.SIGTERM)
    await asyncio.sleep(0)
    assert jail_leftovers(jail) == []
