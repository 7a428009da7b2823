"""prepare -> a write attempt blocks -> thaw -> the write lands, on a real ext4 mount.

FIFREEZE needs a real filesystem, so the agent's root here is an ext4 loop
file mounted under the test's temporary directory (unmounted, and its loop
device detached, whatever happens).
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.polling import wait_for_blocking
from wrennd.guest.client import Conflict, GuestClient

pytestmark = pytest.mark.root


@pytest.fixture
def ext4_mount(tmp_path: Path) -> Iterator[Path]:
    image, mnt = tmp_path / "fs.ext4", tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        # Never leave a frozen filesystem behind: unmounting one would hang.
        subprocess.run(["fsfreeze", "--unfreeze", str(mnt)], capture_output=True)
        subprocess.run(["umount", str(mnt)], check=True)
        # Autoclear detaches the loop device on its last close, from a kernel work
        # item: soon after umount returns, not necessarily before.
        wait_for_blocking(
            lambda: (
                not subprocess.run(
                    ["losetup", "-j", str(image)], capture_output=True, text=True, check=True
                ).stdout
            ),
            what=lambda: f"the loop device of {image} detached; {_holders(mnt)}",
        )


def _holders(mnt: Path) -> str:
    """Processes whose mount namespace still has ``mnt`` mounted: a namespace made
    while it was mounted (by anything on the machine) copies the mount and pins
    the loop device until that namespace ends."""
    pids = []
    for info in Path("/proc").glob("[0-9]*/mountinfo"):
        try:
            if f" {mnt} " in info.read_text():
                pids.append(info.parent.name)
        except OSError:
            continue
    return f"still mounted in the namespaces of pids {pids}" if pids else "no mount holds it"


async def _writer(path: Path) -> asyncio.subprocess.Process:
    """Another process writing into the filesystem, as a guest program would."""
    code = f"import os; fd = os.open({str(path)!r}, os.O_CREAT | os.O_WRONLY); "
    code += "os.write(fd, b'landed'); os.fsync(fd)"
    return await asyncio.create_subprocess_exec("/usr/bin/python3", "-c", code)


async def _finishes(proc: asyncio.subprocess.Process, within: float) -> bool:
    done, _ = await asyncio.wait([asyncio.ensure_future(proc.wait())], timeout=within)
    return bool(done)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


async def test_writes_block_while_frozen_and_land_after_thaw(
    start_agent: Callable[..., object], ext4_mount: Path
) -> None:
    agent = start_agent(root=ext4_mount)
    async with GuestClient(agent.url) as c:  # type: ignore[attr-defined]
        await c.write_file("/before", b"synced by prepare")
        await c.prepare_snapshot(thaw_after=30)
        assert (await c.health()).frozen
        with pytest.raises(Conflict, match="already frozen"):
            await c.prepare_snapshot()
        writer = await _writer(ext4_mount / "during")
        try:
            assert not await _finishes(writer, 1.0), "a write went through a frozen filesystem"
            assert (await c.health()).frozen  # the agent itself still answers
            assert await c.read_bytes("/before") == b"synced by prepare"  # reads still work
            assert await c.thaw() is True
            assert await _finishes(writer, 5.0)
        finally:
            await _kill(writer)
        assert writer.returncode == 0
        assert (ext4_mount / "during").read_bytes() == b"landed"
        assert not (await c.health()).frozen


async def test_init_and_the_timer_thaw_too(
    start_agent: Callable[..., object], ext4_mount: Path
) -> None:
    agent = start_agent(root=ext4_mount)
    async with GuestClient(agent.url) as c:  # type: ignore[attr-defined]
        await c.prepare_snapshot()
        assert (await c.init()).thawed  # the host's first call after a resume
        await c.prepare_snapshot(thaw_after=0.5)
        writer = await _writer(ext4_mount / "later")
        try:
            assert not await _finishes(writer, 0.3)
            assert await _finishes(writer, 5.0)  # the host never thawed: the agent did
        finally:
            await _kill(writer)
        assert not (await c.health()).frozen
        assert await c.thaw() is False


async def test_prepare_that_misses_its_deadline_leaves_nothing_frozen(
    start_agent: Callable[..., object], ext4_mount: Path
) -> None:
    agent = start_agent(root=ext4_mount)
    async with GuestClient(agent.url) as c:  # type: ignore[attr-defined]
        # No sync finishes in a nanosecond: the answer comes at the deadline, and the
        # freeze that completes afterwards is undone by the agent itself.
        with pytest.raises(Conflict, match="did not finish within"):
            await c.prepare_snapshot(thaw_after=30, deadline=1e-9)
        for _ in range(100):
            if not (await c.health()).frozen:
                break
            await asyncio.sleep(0.05)
        assert not (await c.health()).frozen
        writer = await _writer(ext4_mount / "after")
        assert await _finishes(writer, 10.0), "the filesystem stayed frozen"
        await c.prepare_snapshot(thaw_after=30)
        assert await c.thaw()
