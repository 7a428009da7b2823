"""Pausing a guest that is writing (issue 20 item 8).

Firecracker stops the vCPUs whatever the guest's tasks are doing, and fcsim
must too: a task blocked in the kernel on the frozen root filesystem cannot be
frozen by the cgroup freezer, yet the pause has to finish (or fail within its
deadline and leave the guest running).  Each cycle starts three writers (small
appends with fsync, a large streaming write, many small files), pauses while
they run, resumes, and checks that everything written before the pause is
there and whole.  fcsim's guest processes do not survive a pause (its README),
so the writers are started again each cycle, continuing where the data ends.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from wrennd.guest.client import GuestClient
from wrennd.guest.protocol import CommandSpec
from wrennd_sim.inproc import InProcess

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd]

CYCLES = 20
# One pause of an idle guest takes well under a second here; a writer must not make it hang.
PAUSE_BOUND_S = 30.0

# Appends "<n>\n" lines with fsync, continuing after the last complete line.
APPENDER = r"""
import os, sys, time
path = "/root/append.log"
try:
    lines = open(path).read().split("\n")
except FileNotFoundError:
    lines = [""]
n = len([x for x in lines if x])
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
while True:
    os.write(fd, b"%d\n" % n)
    os.fsync(fd)
    n += 1
    time.sleep(0.005)
"""
# Streams 1 MiB blocks of a known pattern into a big file, starting it over at 64 MiB.
STREAMER = r"""
import os
block = bytes(range(256)) * 4096
while True:
    with open("/root/stream.bin", "wb") as f:
        for _ in range(64):
            f.write(block)
"""
# Many small files, each written whole under a temporary name and renamed into place.
SMALL_FILES = r"""
import os
os.makedirs("/root/many", exist_ok=True)
n = 0
while True:
    tmp = "/root/many/.tmp-%d" % n
    with open(tmp, "w") as f:
        f.write("file %d\n" % n * 10)
    os.rename(tmp, "/root/many/f-%d" % (n % 500))
    n += 1
"""


async def _start_writers(guest: GuestClient) -> None:
    for script in (APPENDER, STREAMER, SMALL_FILES):
        await guest.start(CommandSpec(argv=["python3", "-c", script]))


async def _check_data(guest: GuestClient) -> int:
    """Everything on disk is whole; the number of appended lines."""
    text = (await guest.read_bytes("/root/append.log")).decode()
    lines = text.split("\n")
    if lines[-1] != "":
        lines = lines[:-1]  # a line cut by the pause (written, not yet synced) may be short
    lines = [x for x in lines if x]
    assert lines == [str(i) for i in range(len(lines))], "appended lines out of order or lost"
    stream = await guest.read_bytes("/root/stream.bin")
    block = bytes(range(256)) * 4096
    whole = len(stream) - len(stream) % len(block)
    assert stream[:whole] == block * (whole // len(block)), "streamed data damaged"
    for entry in await guest.list_dir("/root/many"):
        if entry.name.startswith("f-"):
            data = (await guest.read_bytes(f"/root/many/{entry.name}")).decode()
            n = int(data.split()[1]) if data else -1
            assert data == f"file {n}\n" * 10, f"{entry.name} is not whole"
    return len(lines)


async def test_pause_busy_writers_twenty_cycles(manager: InProcess, env: Any) -> None:
    sid = (await manager.create("base", memory_mib=128))["id"]
    appended = 0
    for cycle in range(CYCLES):
        guest = manager.guest(sid)
        await _start_writers(guest)
        await asyncio.sleep(0.3)  # let them get going
        t0 = time.monotonic()
        paused = await asyncio.wait_for(manager.pause(sid), PAUSE_BOUND_S)
        took = time.monotonic() - t0
        assert paused["state"] == "paused", paused
        await manager.resume(sid)
        now = await _check_data(manager.guest(sid))
        assert now > appended or cycle == 0, f"cycle {cycle}: no progress ({now} lines)"
        appended = now
        assert took < PAUSE_BOUND_S, f"cycle {cycle}: pause took {took:.1f} s"
    await manager.destroy(sid)
    assert not env.leaks()
