"""The API socket file: mode, group, stale sockets, refusals."""

from __future__ import annotations

import grp
import os
import socket
import stat
from pathlib import Path

import pytest

from wrennd.listener import ListenerError, create


def existing_group() -> grp.struct_group:
    own = os.getgid()
    others = [g for g in grp.getgrall() if g.gr_gid != own]
    # Every Debian system has system groups (daemon, bin, ...): none is a broken host.
    assert others, "no group other than our own exists to hand the socket to"
    return others[0]


@pytest.mark.root
def test_socket_is_0660_and_owned_by_the_group(tmp_path: Path) -> None:
    group = existing_group()
    listener = create(tmp_path / "run" / "wrennd.sock", group.gr_name)
    st = (tmp_path / "run" / "wrennd.sock").stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == group.gr_gid
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["wrennd.sock"]  # no temp left
    listener.sock.close()
    listener.remove()
    assert not (tmp_path / "run" / "wrennd.sock").exists()


def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "wrennd.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: a crashed daemon's leftover
    stale_ino = path.stat().st_ino
    listener = create(path, "no-such-group-here")
    assert stat.S_ISSOCK(path.stat().st_mode) and path.stat().st_ino != stale_ino
    # The new listener, not just some socket, answers on the path.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(path))
        client.sendall(b"hello")
        listener.sock.settimeout(10)
        conn, _ = listener.sock.accept()
        with conn:
            assert conn.recv(5) == b"hello"
    listener.sock.close()


def test_a_live_socket_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "wrennd.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(path))
    live.listen(1)
    with pytest.raises(ListenerError, match="already serving"):
        create(path, "wrennd")
    live.close()


def test_a_regular_file_is_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "wrennd.sock"
    path.write_text("precious")
    with pytest.raises(ListenerError, match="not a socket"):
        create(path, "wrennd")
    assert path.read_text() == "precious"


def test_a_path_too_long_for_sun_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ListenerError, match="longer than"):
        create(tmp_path / ("x" * 120) / "wrennd.sock", "wrennd")


def test_remove_leaves_a_socket_that_replaced_ours(tmp_path: Path) -> None:
    path = tmp_path / "wrennd.sock"
    listener = create(path, "none")
    listener.sock.close()
    path.unlink()
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    listener.remove()
    assert path.exists()
    other.close()
