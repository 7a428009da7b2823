"""The VMM's side of a UffdServer: accepting its connection and waiting for its end.

Firecracker connects once, sends its handshake and then keeps the socket open
without sending anything more: EOF on it means the VMM is gone.
"""

from __future__ import annotations

import asyncio
import socket


class ServeStopped(Exception):
    """stop() was called before any peer connected: nothing was served."""


def peer_pid(conn: socket.socket) -> int:
    """The pid of the process that connected (SO_PEERCRED, as of its connect)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    return int.from_bytes(creds[:4], "little")


async def accept(listener: socket.socket, stop: asyncio.Event) -> socket.socket:
    """The peer's connection, unless ``stop`` is set first (ServeStopped)."""
    accepting = asyncio.ensure_future(asyncio.get_running_loop().sock_accept(listener))
    stop_wait = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([accepting, stop_wait], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_wait.cancel()
        if not accepting.done():
            accepting.cancel()
            await asyncio.wait([accepting])
    if accepting.cancelled():
        raise ServeStopped("stopped before a VMM connected")
    conn, _ = accepting.result()
    return conn


async def wait_end(conn: socket.socket, engine_done_fd: int, stop: asyncio.Event) -> str:
    """Until the peer closes ("peer-closed"), the engine stops by itself
    ("engine-stopped"), or ``stop`` is set ("stopped")."""
    loop = asyncio.get_running_loop()
    ended = loop.create_future()

    def on_peer() -> None:
        try:
            data = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data and not ended.done():  # Firecracker sends nothing more: EOF
            ended.set_result("peer-closed")

    def on_engine() -> None:
        if not ended.done():
            ended.set_result("engine-stopped")

    conn.setblocking(False)
    loop.add_reader(conn.fileno(), on_peer)
    loop.add_reader(engine_done_fd, on_engine)
    stop_wait = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([ended, stop_wait], return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(conn.fileno())
        loop.remove_reader(engine_done_fd)
        stop_wait.cancel()
    return str(ended.result()) if ended.done() else "stopped"
