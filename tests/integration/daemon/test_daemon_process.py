"""wrennd as a real process: sd_notify to a datagram socket standing in for systemd,
the watchdog, SIGHUP, SIGTERM with calls in flight, and socket activation with a
passed listening fd (LISTEN_FDS/LISTEN_PID)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from wrennd.rpc import errors
from wrennd.rpc.client import Client, ClientError, RemoteError

Spawn = Any


async def wait_started(client: Client, method: str, params: dict[str, Any]) -> asyncio.Future[Any]:
    """Start a call and return its future once the daemon says it is running."""
    started = asyncio.Event()
    call = asyncio.ensure_future(client.call(method, params, lambda m, p: started.set()))
    await asyncio.wait_for(started.wait(), 10)
    return call


def test_ready_watchdog_reload_and_stopping_are_notified(
    spawn_daemon: Spawn, tmp_path: Path
) -> None:
    conf = tmp_path / "wrennd.toml"
    conf.write_text('log_level = "info"\n')
    child = spawn_daemon(env={"WATCHDOG_USEC": "100000"}, args=["--config", str(conf)])
    ready = child.notify.wait_for("READY")
    assert ready["MAINPID"] == str(child.proc.pid)
    assert ready["STATUS"] == f"serving on {child.socket_path}"
    # Pinged every WATCHDOG_USEC/2 from the event loop.
    for _ in range(3):
        child.notify.messages.clear()
        child.notify.wait_for("WATCHDOG", timeout=2)
    conf.write_text('log_level = "debug"\nmax_generations = 3\n')
    child.notify.messages.clear()
    child.proc.send_signal(signal.SIGHUP)
    reloading = child.notify.wait_for("RELOADING")
    assert int(reloading["MONOTONIC_USEC"]) > 0
    child.notify.wait_for("READY")
    assert child.stop() == 0
    child.notify.wait_for("STOPPING")
    log = child.stderr()
    assert "log level changed" in log and "new=debug" in log
    assert "keys=max_generations" in log  # reported as needing a restart


async def test_sigterm_ends_calls_in_flight_cleanly(spawn_daemon: Spawn) -> None:
    child = spawn_daemon()
    child.notify.wait_for("READY")
    client = await Client.connect(child.socket_path)
    read = await wait_started(client, "test.sleep", {"seconds": 60})
    life = await wait_started(client, "test.lifecycle", {"seconds": 0.5, "tag": "kept"})
    # A lifecycle call whose client is gone before the signal still completes.
    gone = await Client.connect(child.socket_path)
    orphan = await wait_started(gone, "test.lifecycle", {"seconds": 0.7, "tag": "orphan"})
    await gone.close()
    with pytest.raises(ClientError):
        await orphan
    child.proc.send_signal(signal.SIGTERM)
    with pytest.raises(RemoteError) as e:
        await asyncio.wait_for(read, 10)
    assert e.value.code == errors.SHUTTING_DOWN
    assert await asyncio.wait_for(life, 10) == "done"
    await client.close()
    assert await asyncio.to_thread(child.proc.wait, 20) == 0
    child.notify.wait_for("STOPPING")
    # The shutdown hook ran after both lifecycle calls finished, within the deadline.
    hook = json.loads((child.marker_dir / "hook.json").read_text())
    assert hook["seen"] == ["lifecycle-kept", "lifecycle-orphan"]
    assert 0 < hook["remaining"] <= 150
    child.notify.wait_for("STATUS", "stopping: test hook")
    assert not child.socket_path.exists()


def _activated(fd: int) -> list[str]:
    # Put the socket at fd 3 and name this very process in LISTEN_PID, then exec wrennd.
    code = (
        "import os, sys;"
        f"os.dup2({fd}, 3); os.close({fd});"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1');"
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", code]


async def test_socket_activation_serves_the_passed_listening_fd(
    spawn_daemon: Spawn, tmp_path: Path
) -> None:
    path = tmp_path / "activated.sock"
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(path))
    listening.listen(16)
    child = spawn_daemon(pass_fds=(listening.fileno(),), prefix=_activated(listening.fileno()))
    listening.close()  # the daemon holds the only copy now, as with systemd
    child.notify.wait_for("READY")
    client = await Client.connect(path)
    info = await client.call("host.info")
    assert info["socket"] == {"path": str(path), "activated": True}
    await client.close()
    assert not child.socket_path.exists()  # it did not create its own socket
    assert child.stop() == 0
    assert path.exists()  # systemd's socket file is not the daemon's to remove


def test_activation_with_a_socket_that_is_not_listening_fails_clearly(
    spawn_daemon: Spawn,
) -> None:
    r, w = os.pipe()
    child = spawn_daemon(pass_fds=(r,), prefix=_activated(r))
    assert child.proc.wait(20) == 1
    assert "fd 3 passed by systemd is not a socket" in child.stderr()
    os.close(r)
    os.close(w)


def test_a_second_daemon_on_the_same_socket_refuses_to_start(spawn_daemon: Spawn) -> None:
    first = spawn_daemon()
    first.notify.wait_for("READY")
    second = spawn_daemon(env={"WRENND_RUN_DIR": str(first.socket_path.parent)})
    assert second.proc.wait(20) == 1
    assert "another process is already serving" in second.stderr()
    assert first.stop() == 0


def test_a_bad_config_exits_with_the_config_status(spawn_daemon: Spawn) -> None:
    child = spawn_daemon(env={"WRENND_RPC_MAX_INFLIGHT": "-1"})
    assert child.proc.wait(20) == 2
    assert "rpc_max_inflight" in child.stderr()


def test_a_bad_config_on_sighup_keeps_the_running_one(spawn_daemon: Spawn, tmp_path: Path) -> None:
    conf = tmp_path / "wrennd.toml"
    conf.write_text('log_level = "info"\n')
    child = spawn_daemon(args=["--config", str(conf)])
    child.notify.wait_for("READY")
    conf.write_text('log_level = "loud"\n')
    child.notify.messages.clear()
    child.proc.send_signal(signal.SIGHUP)
    child.notify.wait_for("READY")  # still serving
    assert child.stop() == 0
    log = child.stderr()
    assert "reload failed; the running configuration stays" in log
    assert "log_level='loud'" in log


def test_console_scripts_are_installed() -> None:
    bindir = Path(sys.executable).parent
    for name in ("wrennd", "wrennctl"):
        done = subprocess.run(
            [str(bindir / name), "--help"], capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0 and f"usage: {name}" in done.stdout
