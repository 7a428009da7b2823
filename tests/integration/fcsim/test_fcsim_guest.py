"""fcsim boots a rootfs as its guest: own PID/UTS/mount namespaces, networked through tap0.

The rootfs here is a minimal ext4 made by the test (static busybox, a shell
init that serves /health over busybox httpd), so this runs without the
project's Debian guest image.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.polling import wait_for
from wrennd.network import links, nsutil, tap
from wrennd.vm.errors import FirecrackerError
from wrennd_sim.fcsim import harness
from wrennd_sim.fcsim.harness import SimHandle

pytestmark = [pytest.mark.netns]

BOOT_ARGS = "console=ttyS0 reboot=k ip=169.254.0.21::169.254.0.22:255.255.255.252:fcguest:eth0:off"
INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs devtmpfs /dev
echo "pid=$$ host=$(/bin/busybox hostname)" > /www/health
trap '/bin/busybox kill $httpd; exit 0' TERM INT
/bin/busybox httpd -f -p 49983 -h /www &
httpd=$!
wait
"""


def make_rootfs(path: Path, work: Path) -> None:
    busybox = shutil.which("busybox")
    assert busybox is not None, "busybox-static is in deps/debian-packages.txt"
    tree = work / "tree"
    for d in ("bin", "sbin", "proc", "www", "dev"):
        (tree / d).mkdir(parents=True)
    shutil.copy(busybox, tree / "bin" / "busybox")
    init = tree / "sbin" / "init"
    init.write_text(INIT)
    init.chmod(0o755)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(path), "16M"], check=True)


def _sandbox_ns(name: str) -> None:
    nsutil.create_and_enter(name)
    tap.create_persistent_tap("tap0")
    with links.iproute() as ipr:
        links.mark_and_up(ipr, "lo")
        index = links.mark_and_up(ipr, "tap0")
        ipr.addr("add", index=index, address="169.254.0.22", prefixlen=30)


@pytest.fixture
async def sandbox() -> AsyncIterator[str]:
    name = f"fct-{secrets.token_hex(3)}"
    await nsutil.run_async(lambda: _sandbox_ns(name))
    yield name
    nsutil.remove(name)
    # The guest's namespace, when fcsim was killed and could not remove it (the daemon's
    # network clean-up removes a sandbox's "-g" namespace the same way).
    nsutil.remove(f"{name}-g")


async def http_get(netns: str, path: str, limit: float = 5.0) -> str:
    loop = asyncio.get_running_loop()
    with nsutil.socket_in(netns, socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(s, ("169.254.0.21", 49983)), limit)
        await loop.sock_sendall(s, f"GET {path} HTTP/1.0\r\n\r\n".encode())
        chunks = []
        async with asyncio.timeout(limit):
            while chunk := await loop.sock_recv(s, 4096):
                chunks.append(chunk)
    return b"".join(chunks).decode()


async def wait_health(sim: SimHandle, netns: str) -> str:
    for _ in range(100):
        assert sim.proc.running, "\n".join(sim.proc.log_tail())
        try:
            return await http_get(netns, "/health", 1.0)
        except (OSError, TimeoutError):
            await asyncio.sleep(0.1)
    raise AssertionError("the guest's /health never answered")


def loop_devices_of(image: Path) -> str:
    return subprocess.run(
        ["losetup", "-j", str(image)], capture_output=True, text=True, check=True
    ).stdout


def leftover_cgroups(sim: SimHandle) -> list[Path]:
    """This fcsim's guest cgroup (``fcsim-guest-<pid>``), if it is still there: other
    fcsims on the machine (other tests, other checkouts) have their own."""
    return list(Path("/sys/fs/cgroup").rglob(f"fcsim-guest-{sim.proc.pid}"))


async def boot_guest(sim: SimHandle, image: Path, kernel: Path) -> None:
    c = sim.client
    await c.put_machine_config(1, 16, track_dirty_pages=True)
    await c.put_boot_source(str(kernel), BOOT_ARGS)
    await c.put_drive("rootfs", str(image), is_root_device=True)
    await c.put_network_interface("eth0", "tap0", "06:00:AC:10:00:02")
    await c.start()


async def test_guest_boots_answers_freezes_and_shuts_down(sandbox: str, tmp_path: Path) -> None:
    image = tmp_path / "rootfs.ext4"
    await asyncio.to_thread(make_rootfs, image, tmp_path)
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"kernel")
    sim = await harness.launch(tmp_path / "vm", "guest1", netns=nsutil.netns_path(sandbox))
    try:
        await boot_guest(sim, image, kernel)
        body = await wait_health(sim, sandbox)
        # PID 1 of its own PID namespace, hostname from ip= in its own UTS namespace.
        assert "pid=1 host=fcguest" in body
        assert loop_devices_of(image), "the rootfs is mounted through a loop device"
        assert f"{sandbox}-g" in nsutil.list_named(), "guest namespace named after the sandbox's"

        await sim.client.pause()
        with pytest.raises(TimeoutError):
            await http_get(sandbox, "/health", 0.5)  # frozen: no answer
        await sim.client.resume()
        assert "pid=1" in await wait_health(sim, sandbox)

        # Ctrl-Alt-Del: init exits, and fcsim exits with it, as Firecracker does.
        await sim.client.action("SendCtrlAltDel")
        assert await asyncio.wait_for(sim.proc.wait(), 15) == 0
    finally:
        await sim.close()
    assert f"{sandbox}-g" not in nsutil.list_named()
    assert not loop_devices_of(image), "the loop device must detach with the guest"
    assert not leftover_cgroups(sim)


async def test_stopping_fcsim_stops_its_guest(sandbox: str, tmp_path: Path) -> None:
    image = tmp_path / "rootfs.ext4"
    await asyncio.to_thread(make_rootfs, image, tmp_path)
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"kernel")
    sim = await harness.launch(tmp_path / "vm", "guest2", netns=nsutil.netns_path(sandbox))
    await boot_guest(sim, image, kernel)
    await wait_health(sim, sandbox)
    await sim.close()
    assert f"{sandbox}-g" not in nsutil.list_named()
    assert not loop_devices_of(image)


async def test_missing_tap_fails_the_boot_and_leaves_nothing(sandbox: str, tmp_path: Path) -> None:
    image = tmp_path / "rootfs.ext4"
    await asyncio.to_thread(make_rootfs, image, tmp_path)
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"kernel")
    sim = await harness.launch(tmp_path / "vm", "guest3", netns=nsutil.netns_path(sandbox))
    try:
        c = sim.client
        await c.put_boot_source(str(kernel), BOOT_ARGS)
        await c.put_drive("rootfs", str(image), is_root_device=True)
        await c.put_network_interface("eth0", "tap9")
        with pytest.raises(FirecrackerError, match=r"Cannot run the guest: .*tap9"):
            await c.start()
        assert (await c.describe_instance())["state"] == "Not started"
        assert not loop_devices_of(image)
        assert not leftover_cgroups(sim)
        assert f"{sandbox}-g" not in nsutil.list_named()
    finally:
        await sim.close()


def _descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, todo = [], [pid]
    while todo:
        kids = [p for p, pp in parents.items() if pp == todo[0]]
        found += kids
        todo = todo[1:] + kids
    return found


def _mount_loop_fs(tmp_path: Path) -> tuple[Path, Path]:
    other, mnt = tmp_path / "other.ext4", tmp_path / "other"
    mnt.mkdir()
    subprocess.run(["mkfs.ext4", "-q", "-F", str(other), "8M"], check=True)
    # mount -o loop sets autoclear: the device goes once nothing holds the filesystem.
    subprocess.run(["mount", "-o", "loop", str(other), str(mnt)], check=True)
    return other, mnt


def _seen_by(pids: list[int], mnt: Path) -> list[int]:
    seen = []
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            if str(mnt) in Path(f"/proc/{pid}/mountinfo").read_text():
                seen.append(pid)
    return seen


def _umount(mnt: Path) -> None:
    subprocess.run(["umount", str(mnt)], check=False, capture_output=True)


async def test_the_guest_does_not_pin_the_hosts_other_loop_mounts(
    sandbox: str, tmp_path: Path
) -> None:
    """A host filesystem on a loop device (another sandbox's layer, another test's state dir)
    must not live on in the guest's mount namespace: the host could not free its device."""
    other, mnt = await asyncio.to_thread(_mount_loop_fs, tmp_path)
    image = tmp_path / "rootfs.ext4"
    await asyncio.to_thread(make_rootfs, image, tmp_path)
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"kernel")
    sim = await harness.launch(tmp_path / "vm", "guest4", netns=nsutil.netns_path(sandbox))
    try:
        await boot_guest(sim, image, kernel)
        await wait_health(sim, sandbox)
        guest = _descendants(sim.proc.pid)
        assert guest, "the guest's processes are fcsim's descendants"
        assert _seen_by(guest, mnt) == []
        await asyncio.to_thread(_umount, mnt)
        await wait_for(lambda: not loop_devices_of(other), timeout=10, what="the loop detached")
        assert "pid=1 " in await wait_health(sim, sandbox), "the guest runs on"
    finally:
        await asyncio.to_thread(_umount, mnt)
        await sim.close()


FIFREEZE = 0xC0045877  # _IOWR('X', 119, int)
FITHAW = 0xC0045878  # _IOWR('X', 120, int)


def _guest_init(sim: SimHandle) -> int:
    """The host pid of the guest's PID 1 (its NSpid ends in 1)."""
    for pid in _descendants(sim.proc.pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            status = Path(f"/proc/{pid}/status").read_text()
            lines = status.splitlines()
            nspid = next(line.split()[1:] for line in lines if line.startswith("NSpid:"))
            if len(nspid) > 1 and nspid[-1] == "1":
                return pid
    raise AssertionError("the guest's init is not among fcsim's descendants")


def _root_ioctl(init_pid: int, request: int) -> None:
    """FIFREEZE/FITHAW the guest's root, as the guest agent does before a snapshot."""
    fd = os.open(f"/proc/{init_pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, request, 0)
    finally:
        os.close(fd)


def _rescue(image: Path, work: Path) -> None:
    """Free a loop device a frozen, unmounted filesystem still pins (the bug these tests
    look for): mount it again, thaw it, unmount it, so a failure leaks nothing."""
    for line in loop_devices_of(image).splitlines():
        dev, mnt = line.split(":", 1)[0], work / "rescue"
        mnt.mkdir(exist_ok=True)
        if subprocess.run(["mount", "-t", "ext4", dev, str(mnt)], check=False).returncode == 0:
            with contextlib.suppress(OSError):
                fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    fcntl.ioctl(fd, FITHAW, 0)
                finally:
                    os.close(fd)
            subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("how", ["stop", "kill9"])
async def test_a_guest_that_ends_with_its_root_frozen_frees_its_loop_device(
    sandbox: str, tmp_path: Path, how: str
) -> None:
    """A paused sandbox's guest ends with its root FIFREEZEd by the agent. Firecracker's guest
    kernel takes that freeze with it; fcsim's guest is on the host's kernel, where a frozen
    superblock outlives its last mount and keeps the loop device (and the drive) busy for
    good, however fcsim ends: stopped, or killed with -9."""
    image = tmp_path / "rootfs.ext4"
    await asyncio.to_thread(make_rootfs, image, tmp_path)
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"kernel")
    sim = await harness.launch(tmp_path / "vm", f"guest-{how}", netns=nsutil.netns_path(sandbox))
    try:
        await boot_guest(sim, image, kernel)
        await wait_health(sim, sandbox)
        await asyncio.to_thread(_root_ioctl, _guest_init(sim), FIFREEZE)
        await sim.client.pause()
        if how == "kill9":
            os.kill(sim.proc.pid, signal.SIGKILL)
            await sim.proc.wait()
        await sim.close()
        await wait_for(
            lambda: not loop_devices_of(image), timeout=10, what="the frozen root's loop detached"
        )
        # A killed fcsim cannot remove its guest's cgroup (`fcsim --reap-orphans` does), but
        # nothing of the guest may run on in it.
        for cg in leftover_cgroups(sim):
            assert how == "kill9", f"{cg} is left"
            assert not (cg / "cgroup.procs").read_text().strip(), f"the guest runs on in {cg}"
            cg.rmdir()
    finally:
        await sim.close()
        await asyncio.to_thread(_rescue, image, tmp_path)
