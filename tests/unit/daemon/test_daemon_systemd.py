"""sd_notify and LISTEN_FDS handling, against real sockets."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from wrennd import systemd


def test_notifier_sends_key_value_datagrams(tmp_path: Path) -> None:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify"))
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify")}
    notifier = systemd.Notifier.from_env(env)
    assert "NOTIFY_SOCKET" not in env  # not inherited by child processes
    assert notifier.ready("serving")
    assert receiver.recv(4096).decode().splitlines() == [
        "READY=1",
        "STATUS=serving",
        f"MAINPID={os.getpid()}",
    ]
    notifier.close()
    receiver.close()


def test_notifier_reaches_abstract_sockets() -> None:
    name = f"wrennd-test-{os.getpid()}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    notifier = systemd.Notifier(f"@{name}")
    assert notifier.watchdog()
    assert receiver.recv(64) == b"WATCHDOG=1"
    notifier.close()
    receiver.close()


def test_notifier_without_systemd_does_nothing(tmp_path: Path) -> None:
    assert not systemd.Notifier.from_env({}).enabled
    # A vanished systemd socket is logged, never raised.
    assert not systemd.Notifier(str(tmp_path / "gone")).stopping("bye")


def test_watchdog_interval_is_half_the_timeout() -> None:
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}) is None
    assert systemd.watchdog_interval({}) is None


def test_listen_fds_for_another_process_are_ignored() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    assert systemd.listen_socket(env) is None
    assert env == {}


def test_more_than_one_passed_socket_is_refused() -> None:
    with pytest.raises(systemd.ActivationError, match="exactly one"):
        systemd.listen_socket({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2"})
