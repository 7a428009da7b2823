"""Every malformed handshake is refused with a clear error; nothing is served
and nothing leaks.  The peer here is a raw socket in this process."""

from __future__ import annotations

import array
import asyncio
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from wrennd.uffd import handshake
from wrennd.uffd.handshake import HandshakeError, Region
from wrennd.uffd.server import UffdServer
from wrennd_sim import uffd_peer

pytestmark = pytest.mark.uffd
P = 4096
MiB = 1 << 20


@pytest.fixture
def guest_memory() -> Iterator[uffd_peer.GuestMemory]:
    with uffd_peer.GuestMemory(MiB) as m:
        yield m


def send(path: Path, body: bytes, fds: list[int]) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    s.sendmsg([body], anc)
    return s


async def refused(
    tmp_path: Path, snapshot_factory: Callable[..., Any], kit: Any, peer: Callable[[Path], Any]
) -> str:
    leaks = kit.LeakCheck(tmp_path)
    snap = snapshot_factory(MiB)
    server = UffdServer(tmp_path / "u.sock", snap.memory, handshake_timeout=0.5)
    await server.start()
    conn = await asyncio.get_running_loop().run_in_executor(None, peer, server.socket_path)
    try:
        with pytest.raises(HandshakeError) as info:
            await server.serve()
        assert not server.ready.is_set()
        assert server.engine is not None and not server.engine.started
        # the server hung up on the peer
        if conn is not None:
            conn.settimeout(5)
            assert conn.recv(1) == b""
    finally:
        if conn is not None:
            conn.close()
        await server.close()
    leaks.check()
    return str(info.value)


def regions_for(m: uffd_peer.GuestMemory, size: int = MiB, page: int = P) -> list[Region]:
    # aligned to the claimed page size, so the parser gets past alignment
    return [Region(-(-m.address // page) * page, size, 0, page)]


async def test_bad_json(tmp_path: Path, snapshot_factory: Any, kit: Any) -> None:
    with uffd_peer.Userfaultfd() as u:
        msg = await refused(
            tmp_path, snapshot_factory, kit, lambda p: send(p, b'[{"size": 1', [u.fd])
        )
    assert "not valid JSON" in msg


async def test_no_fd(tmp_path: Path, snapshot_factory: Any, kit: Any, guest_memory: Any) -> None:
    body = handshake.encode(regions_for(guest_memory))
    msg = await refused(tmp_path, snapshot_factory, kit, lambda p: send(p, body, []))
    assert "carried 0 file descriptors, expected exactly 1" in msg


async def test_two_fds(tmp_path: Path, snapshot_factory: Any, kit: Any, guest_memory: Any) -> None:
    body = handshake.encode(regions_for(guest_memory))
    with uffd_peer.Userfaultfd() as u1, uffd_peer.Userfaultfd() as u2:
        msg = await refused(
            tmp_path, snapshot_factory, kit, lambda p: send(p, body, [u1.fd, u2.fd])
        )
    assert "carried 2 file descriptors" in msg


async def test_many_fds(tmp_path: Path, snapshot_factory: Any, kit: Any, guest_memory: Any) -> None:
    body = handshake.encode(regions_for(guest_memory))
    r, w = os.pipe()
    try:
        msg = await refused(tmp_path, snapshot_factory, kit, lambda p: send(p, body, [r] * 20))
    finally:
        os.close(r)
        os.close(w)
    assert "file descriptors" in msg


async def test_fd_is_not_a_uffd(
    tmp_path: Path, snapshot_factory: Any, kit: Any, guest_memory: Any
) -> None:
    body = handshake.encode(regions_for(guest_memory))
    r, w = os.pipe()
    try:
        msg = await refused(tmp_path, snapshot_factory, kit, lambda p: send(p, body, [r]))
    finally:
        os.close(r)
        os.close(w)
    assert "not a userfaultfd" in msg


@pytest.mark.parametrize(
    ("size", "page", "match"),
    [
        (MiB // 2, P, "regions cover 524288 bytes of memory, but the snapshot has 1048576"),
        (MiB, 2 * MiB, "not a multiple of the page size"),
        (MiB, 2 * P, "page size 8192, but the snapshot uses 4096"),
    ],
)
async def test_regions_do_not_match_snapshot(
    tmp_path: Path,
    snapshot_factory: Any,
    kit: Any,
    guest_memory: Any,
    size: int,
    page: int,
    match: str,
) -> None:
    body = handshake.encode(regions_for(guest_memory, size, page))
    with uffd_peer.Userfaultfd() as u:
        msg = await refused(tmp_path, snapshot_factory, kit, lambda p: send(p, body, [u.fd]))
    assert match in msg


async def test_peer_closes_without_handshake(
    tmp_path: Path, snapshot_factory: Any, kit: Any
) -> None:
    def connect_and_close(p: Path) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(p))

    msg = await refused(tmp_path, snapshot_factory, kit, connect_and_close)
    assert "closed the connection before sending the handshake" in msg


async def test_peer_silent_times_out(tmp_path: Path, snapshot_factory: Any, kit: Any) -> None:
    def connect(p: Path) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(p))
        return s

    msg = await refused(tmp_path, snapshot_factory, kit, connect)
    assert "no handshake within 0.5 s" in msg


async def test_existing_non_socket_path_is_not_clobbered(
    tmp_path: Path, snapshot_factory: Any
) -> None:
    path = tmp_path / "u.sock"
    path.write_text("precious")
    server = UffdServer(path, snapshot_factory(MiB).memory)
    with pytest.raises(FileExistsError, match="is not a socket"):
        await server.start()
    assert path.read_text() == "precious"
    assert server.engine is None
