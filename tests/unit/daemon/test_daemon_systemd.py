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


def test_fd_store_messages_carry_the_fd_and_its_name(tmp_path: Path) -> None:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify"))
    notifier = systemd.Notifier(str(tmp_path / "notify"))
    r, w = os.pipe()
    assert notifier.store_fd("uffd-sb-1", w)
    msg, fds, _, _ = socket.recv_fds(receiver, 4096, 4)
    assert msg == b"FDSTORE=1\nFDNAME=uffd-sb-1" and len(fds) == 1
    os.write(fds[0], b"x")  # the same pipe, a new fd
    assert os.read(r, 1) == b"x"
    assert notifier.remove_stored("uffd-sb-1")
    msg, fds2, _, _ = socket.recv_fds(receiver, 4096, 4)
    assert (msg, fds2) == (b"FDSTOREREMOVE=1\nFDNAME=uffd-sb-1", [])
    for fd in (r, w, fds[0]):
        os.close(fd)
    notifier.close()
    receiver.close()


def test_inherited_fds_split_by_name() -> None:
    """Stored fds come back under their FDNAME, activation sockets under theirs; the
    variables are consumed and the stored fds made close-on-exec."""
    r, w = os.pipe()
    os.set_inheritable(r, True)
    base = systemd.LISTEN_FDS_START
    saved = [os.dup(base + i) if _is_open(base + i) else -1 for i in range(2)]
    try:
        os.dup2(r, base)
        os.dup2(w, base + 1)
        env = {
            "LISTEN_PID": str(os.getpid()),
            "LISTEN_FDS": "2",
            "LISTEN_FDNAMES": "wrennd.socket:uffdpeer-sb-1",
        }
        got = systemd.inherited_fds(env)
        assert env == {}
        assert got.sockets == [base] and got.stored == {"uffdpeer-sb-1": base + 1}
        assert not os.get_inheritable(base + 1)
        with pytest.raises(systemd.ActivationError, match="not a socket"):
            systemd.socket_of(got.sockets)
    finally:
        for i, fd in enumerate(saved):
            if fd >= 0:
                os.dup2(fd, base + i)
                os.close(fd)
            else:
                os.close(base + i)
        os.close(r)
        os.close(w)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
