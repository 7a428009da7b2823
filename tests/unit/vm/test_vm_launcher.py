"""The VMM launcher against real child processes: socket wait, early exit, stop, reaping."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from wrennd.vm import netns as vm_netns
from wrennd.vm.errors import VmmExited, VmmStartTimeout
from wrennd.vm.launcher import FirecrackerArgs, VmmFiles, VmmProcess, tail_lines

# A stand-in VMM: listens on the socket given as argv[1]; argv[2] says how it
# treats SIGTERM ("exit" or "ignore").
SERVER = """
import os, signal, socket, sys, time
if sys.argv[2] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("stand-in vmm listening", flush=True)
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen()
time.sleep(120)
"""


def zombie_children() -> list[int]:
    """Children of this process that exited and were not reaped."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may contain spaces, split after ')'.
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == me and state == "Z":
            found.append(int(entry.name))
    return found


def inode(path: Path) -> int:
    return path.stat().st_ino


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


@pytest.fixture
def files(tmp_path: Path) -> VmmFiles:
    return VmmFiles.under(tmp_path / "vmm")


async def test_start_waits_for_socket_and_stop_is_graceful(files: VmmFiles) -> None:
    argv = [sys.executable, "-c", SERVER, str(files.api_socket), "exit"]
    proc = await VmmProcess.start(argv, files, socket_timeout=10)
    assert proc.running
    assert files.api_socket.exists()
    rc = await proc.stop(grace=5)
    assert rc == -signal.SIGTERM
    assert not files.api_socket.exists(), "stale API socket left behind"
    assert gone(proc.pid)
    assert zombie_children() == []


async def test_socket_never_appears(files: VmmFiles) -> None:
    argv = [sys.executable, "-c", "import time; print('never binds', flush=True); time.sleep(60)"]
    t0 = time.monotonic()
    with pytest.raises(VmmStartTimeout) as err:
        await VmmProcess.start(argv, files, socket_timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert "never binds" in str(err.value)
    assert zombie_children() == []
    assert not files.api_socket.exists()


async def test_process_exits_early(files: VmmFiles) -> None:
    argv = ["/bin/sh", "-c", "echo 'fatal: cannot open /dev/kvm' >&2; exit 3"]
    with pytest.raises(VmmExited) as err:
        await VmmProcess.start(argv, files, socket_timeout=10)
    assert err.value.returncode == 3
    assert "fatal: cannot open /dev/kvm" in err.value.log_tail
    assert "exited with status 3" in str(err.value)
    assert zombie_children() == []


async def test_stop_of_a_hung_process_kills_it(files: VmmFiles) -> None:
    argv = [sys.executable, "-c", SERVER, str(files.api_socket), "ignore"]
    proc = await VmmProcess.start(argv, files, socket_timeout=10)
    t0 = time.monotonic()
    rc = await proc.stop(grace=0.3)
    assert rc == -signal.SIGKILL
    assert 0.3 <= time.monotonic() - t0 < 5
    assert not files.api_socket.exists()
    assert gone(proc.pid)
    assert zombie_children() == []


async def test_unexpected_exit_is_reaped_and_reported(files: VmmFiles) -> None:
    argv = [sys.executable, "-c", SERVER, str(files.api_socket), "exit"]
    proc = await VmmProcess.start(argv, files, socket_timeout=10)
    os.kill(proc.pid, signal.SIGKILL)  # a crash the launcher did not ask for
    assert await proc.wait() == -signal.SIGKILL
    assert not proc.running
    assert not files.api_socket.exists(), "a crashed VMM's socket must be removed"
    assert zombie_children() == []
    assert "stand-in vmm listening" in proc.exited_error("crashed").log_tail
    assert await proc.stop() == -signal.SIGKILL  # stop after exit is harmless


def test_firecracker_argv(files: VmmFiles) -> None:
    args = FirecrackerArgs(Path("/usr/bin/firecracker"), "sb1", files, level="Debug")
    argv = args.argv()
    assert argv[0] == "/usr/bin/firecracker"
    assert argv[argv.index("--api-sock") + 1] == str(files.api_socket)
    assert argv[argv.index("--log-path") + 1] == str(files.log_file)
    assert argv[argv.index("--id") + 1] == "sb1"
    assert argv[argv.index("--level") + 1] == "Debug"


def test_tail_lines(tmp_path: Path) -> None:
    p = tmp_path / "log"
    p.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail_lines(p, 3) == ["line 97", "line 98", "line 99"]
    assert tail_lines(tmp_path / "missing") == []


@pytest.mark.netns
async def test_starts_inside_the_given_network_namespace(files: VmmFiles) -> None:
    from pyroute2 import netns

    name = f"fct-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        ns_path = Path("/run/netns") / name
        report = files.run_dir.parent / "ns-inode"
        code = (
            "import os,sys; open(sys.argv[3],'w').write(str(os.stat('/proc/self/ns/net').st_ino));"
            + SERVER
        )
        argv = [sys.executable, "-c", code, str(files.api_socket), "exit", str(report)]
        proc = await VmmProcess.start(argv, files, netns_path=ns_path, socket_timeout=10)
        try:
            assert int(report.read_text()) == ns_path.stat().st_ino
            # Neither the loop thread nor the spawner thread stayed in the namespace.
            home = inode(Path("/proc/thread-self/ns/net"))
            assert home != ns_path.stat().st_ino
            spawner = await asyncio.get_running_loop().run_in_executor(
                vm_netns._SPAWNER.pool(), lambda: Path("/proc/thread-self/ns/net").stat().st_ino
            )
            assert spawner == home
        finally:
            await proc.stop(grace=5)
    finally:
        netns.remove(name)
    assert zombie_children() == []


# Listens only after a delay, and writes down when (CLOCK_MONOTONIC is system-wide).
LATE_SERVER = """
import socket, sys, time
time.sleep(float(sys.argv[2]))
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen()
print(time.monotonic(), flush=True)
time.sleep(120)
"""


async def test_a_late_socket_is_seen_within_milliseconds(files: VmmFiles) -> None:
    """No backoff: the socket is seen a few ms after it listens, however late that is
    (the old doubling backoff was up to 100 ms late)."""
    argv = [sys.executable, "-c", LATE_SERVER, str(files.api_socket), "0.4"]
    proc = await VmmProcess.start(argv, files, socket_timeout=10)
    seen = time.monotonic()
    try:
        listened = float(files.output_file.read_text().split()[-1])
        # Loose bound for a loaded machine; still far under the old backoff's 100 ms steps.
        assert 0 <= seen - listened < 0.05, seen - listened
    finally:
        await proc.stop(grace=0.0)
