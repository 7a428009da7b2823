"""A connection upgraded to a raw byte channel: file bytes without base64 or JSON.

A connection whose first message calls a ``stream`` method (``sandbox.files.stream``)
stops framing lines after that message: the bytes that follow belong to a
transfer, in one direction.  The daemon answers the call first (one JSON line),
then the channel is raw until it is closed.

Flow control both ways: ``read`` keeps at most ``READ_LIMIT`` bytes buffered and
stops reading the socket past that (the kernel then pushes back on the client);
``write`` waits while the transport's write buffer is above its high-water mark.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from collections.abc import Awaitable, Callable

READ_LIMIT = 1 << 20
WRITE_HIGH_WATER = 1 << 20
SOCKET_BUFFER = 1 << 20  # the kernel caps it at net.core.wmem_max


class ChannelClosed(Exception):
    """The peer went away (or the channel was closed) while bytes were still due."""


class Channel:
    """The raw side of one upgraded connection; owned by the transfer that claimed it."""

    def __init__(
        self, transport: asyncio.Transport, wait_writable: Callable[[], Awaitable[bool]]
    ) -> None:
        self._transport = transport
        self._wait_writable = wait_writable
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._eof = False
        self._lost = False
        self._paused = False
        self._ready = asyncio.Event()  # data, EOF or loss: a reader may look again
        self._opened = asyncio.Event()  # the call's answer went out: raw bytes may follow
        self.claimed = False
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):  # more in flight per wake-up
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)

    # -- from the connection ---------------------------------------------------

    def feed(self, data: bytes) -> None:
        if not data or self._eof:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self._ready.set()
        if self._buffered >= READ_LIMIT and not self._paused and not self._lost:
            self._transport.pause_reading()
            self._paused = True

    def feed_eof(self) -> None:
        self._eof = True
        self._ready.set()

    def lost(self) -> None:
        self._lost = True
        self._ready.set()
        self._opened.set()  # a writer waiting to start finds the channel gone

    def answered(self) -> None:
        """The stream call's answer went out: raw bytes may follow if a transfer claimed
        the channel; otherwise the call failed and the connection has nothing more to say."""
        if self.claimed:
            self._opened.set()
        else:
            self._transport.close()

    # -- for the transfer ------------------------------------------------------

    async def read(self) -> bytes:
        """The next bytes the peer sent; b"" at its end of data (a half-close or a close)."""
        while not self._chunks:
            if self._eof or self._lost:
                return b""
            self._ready.clear()
            await self._ready.wait()
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._paused and self._buffered < READ_LIMIT and not self._lost:
            self._paused = False
            self._transport.resume_reading()
        return data

    async def write(self, data: bytes) -> None:
        """Send bytes once the answer went out; waits for a peer that does not read."""
        await self._opened.wait()
        if self._lost or not await self._wait_writable() or self._transport.is_closing():
            raise ChannelClosed("the client closed the channel")
        self._transport.write(data)

    def close(self) -> None:
        """Flush what was written, then close (the peer reads EOF after the last byte)."""
        self._transport.close()

    def abort(self) -> None:
        """Close at once: the peer sees the stream end early (its transfer failed)."""
        self.lost()
        self._transport.abort()
