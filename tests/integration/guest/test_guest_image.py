"""The built image boots its own wrenn-init and agent: chroot in new namespaces, no VM.

The image (built once, cached outside the clone by images/build-image) is
mounted read-only under an overlay inside a private mount namespace, then
wrenn-init runs chrooted as PID 1 of new PID and UTS namespaces inside a
network namespace the test creates.  The test talks to the agent from a
thread that joined that network namespace, over the namespace's loopback that
wrenn-init brought up: no address outside the namespace is used.  Everything
(processes, mounts, loop device, namespace) is gone when the test ends.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.polling import wait_for_blocking
from wrennd.guest.client import GuestClient
from wrennd.guest.protocol import AGENT_PORT, CommandSpec

pytestmark = [pytest.mark.root, pytest.mark.netns]

CLONE_NEWNET = 0x40000000
UNSHARE = ("--mount", "--pid", "--uts", "--fork", "--kill-child")
T = TypeVar("T")


def _in_netns(ns: str, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` on its own event loop in a thread that joined network namespace ``ns``."""
    result: list[T] = []
    errors: list[BaseException] = []

    def thread() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:  # this thread only
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        try:
            result.append(asyncio.run(work()))  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=thread)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return result[0]


@pytest.fixture
def guest(guest_image: Path, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    ns = f"wrn-gtest-{secrets.token_hex(4)}"
    dirs = {name: tmp_path / name for name in ("lower", "upper", "work", "root")}
    for d in dirs.values():
        d.mkdir()
    script = (
        "set -e\n"
        f"mount -o loop,ro {guest_image} {dirs['lower']}\n"
        f"mount -t overlay overlay -o lowerdir={dirs['lower']},upperdir={dirs['upper']},"
        f"workdir={dirs['work']} {dirs['root']}\n"
        f"exec chroot {dirs['root']} /usr/sbin/wrenn-init\n"
    )
    log = tmp_path / "console.log"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = None
    try:
        with open(log, "wb") as console:
            proc = subprocess.Popen(
                # --kill-child: if unshare dies, so does the namespace's PID 1 (and with
                # it every process, mount and the loop device of the guest).
                ["ip", "netns", "exec", ns, "unshare", *UNSHARE, "sh", "-c", script],
                stdout=console,
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "WRENN_HOSTNAME": "guest-test"},
                start_new_session=True,
            )
        yield ns, proc, log
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if proc is not None:
            proc.wait(30)
        subprocess.run(["ip", "netns", "delete", ns], check=True)
        _assert_loop_detached(guest_image)


def _assert_loop_detached(image: Path) -> None:
    def attached() -> str:
        return subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout

    wait_for_blocking(lambda: not attached(), timeout=10, interval=0.05, what="loop detached")


PROBE = """
import os, socket, sys, aiohttp
print(sys.executable, sys.version.split()[0], aiohttp.__version__, socket.gethostname())
print(os.stat('/usr/bin/python3').st_dev)
print(open('/proc/1/cmdline').read().replace('\\0', ' ').strip())
print(sorted(f"{l.split()[1]}:{l.split()[2]}" for l in open('/proc/mounts')
             if l.split()[1] in ('/proc', '/sys', '/dev', '/run', '/tmp')))
print(open('/etc/resolv.conf').read().strip())
"""

# A grandchild orphaned to PID 1 must be reaped by wrenn-init, not left a zombie.
# It exits only once orphaned; then the script polls (bounded) until it is gone
# from /proc and prints its last state: "gone" when reaped, "Z" when left a zombie.
ORPHAN = """
import os, time
r, w = os.pipe()
child = os.fork()
if child == 0:
    parent = os.getpid()
    grandchild = os.fork()
    if grandchild == 0:
        while os.getppid() == parent:
            time.sleep(0.01)
        os._exit(0)
    os.write(w, str(grandchild).encode())
    os._exit(0)
os.close(w)
os.waitpid(child, 0)
grandchild = int(os.read(r, 32))
def state():
    try:
        return open(f'/proc/{grandchild}/stat').read().rsplit(')', 1)[1].split()[0]
    except FileNotFoundError:
        return 'gone'
deadline = time.monotonic() + 30
while state() != 'gone' and time.monotonic() < deadline:
    time.sleep(0.01)
print(state())
"""


async def _exercise_guest() -> list[str]:
    async with GuestClient(f"http://127.0.0.1:{AGENT_PORT}") as c:
        await c.wait_healthy(time.monotonic() + 60)
        probe = await c.run(CommandSpec(argv=["/usr/bin/python3", "-c", PROBE]))
        assert probe.ok, probe.stderr
        orphan = await c.run(CommandSpec(argv=["/usr/bin/python3", "-c", ORPHAN]))
        await c.write_file("/tmp/hello", b"from the host")
        assert await c.read_bytes("/tmp/hello") == b"from the host"
        # The guest asks its init to shut down, as `poweroff` would (from a
        # background process, so this request is answered before the agent stops).
        await c.start(CommandSpec(shell="sleep 0.2; kill -TERM 1"))
        return [*probe.stdout.decode().splitlines(), orphan.stdout.decode().strip()]


def test_image_boots_its_init_and_agent(
    guest: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    ns, proc, log = guest
    try:
        lines = _in_netns(ns, _exercise_guest)
    except BaseException:
        print(log.read_text(errors="replace"))
        raise
    version, dev, init_cmd, mounts, resolv, orphans = (*lines[:5], lines[-1])
    assert version.split() == ["/usr/bin/python3", "3.11.2", "3.8.4", "guest-test"]
    host_dev = Path("/usr/bin/python3").stat().st_dev
    assert int(dev) != host_dev  # the image's python3, not the host's
    assert "wrenn-init" in init_cmd
    assert mounts == "['/dev:devtmpfs', '/proc:proc', '/run:tmpfs', '/sys:sysfs', '/tmp:tmpfs']"
    assert resolv.startswith("nameserver ")
    assert orphans == "gone", f"the orphaned grandchild was not reaped: state {orphans}"
    # wrenn-init stopped the agent and reset: in a PID namespace the kernel ends
    # the namespace and reports its init killed by SIGHUP, which unshare passes on.
    assert proc.wait(30) == -signal.SIGHUP, log.read_text(errors="replace")
    console = log.read_text(errors="replace")
    assert "agent started" in console and "resetting" in console
