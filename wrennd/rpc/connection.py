"""One client connection: line framing, dispatch, per-connection limits, call contexts.

Limits that keep one client from starving the others:

- a message longer than ``max_message_bytes`` is answered with a
  MessageTooLarge error and skipped up to its newline; the connection lives on;
- at most ``max_inflight`` calls run per connection: past that the connection
  stops reading (the kernel socket buffer then pushes back on the client);
- a client that does not read its answers fills its transport's write buffer;
  past the high-water mark the connection stops reading new requests, and read
  work streaming to it waits, so its backlog is bounded and costs no one else.

Lifecycle calls are not owned by the connection: they run as server tasks and
finish even when the client disconnects.

A connection whose first message calls a ``stream`` method becomes a raw byte
channel after it (wrennd.rpc.channel): line framing and the limits above stop,
the channel's own flow control takes over.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import select
import socket
import struct
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, cast

from wrennd.log import kv
from wrennd.rpc import dispatch, protocol
from wrennd.rpc.channel import Channel
from wrennd.rpc.errors import (
    InvalidRequest,
    MessageTooLarge,
    ParseError,
    RpcError,
)
from wrennd.rpc.methods import Kind, PeerCred
from wrennd.rpc.protocol import Request, RequestId

if TYPE_CHECKING:
    from wrennd.rpc.server import RpcServer

log = logging.getLogger("wrennd.rpc")
_ids = itertools.count(1)
_UNKNOWN_PEER = PeerCred(pid=0, uid=-1, gid=-1)


def peer_credentials(sock: socket.socket | None) -> PeerCred:
    if sock is None or sock.family != socket.AF_UNIX:
        return _UNKNOWN_PEER
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCred(pid, uid, gid)


def peer_hung_up(transport: asyncio.Transport | None) -> bool:
    """Whether the peer closed its socket (POLLHUP), rather than only shut its writing.

    Both read as EOF; only a full close hangs up an AF_UNIX stream socket.
    """
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))


def upgrade(conn: Connection, call: dispatch.Call, single: bool) -> bytes | None:
    """Make ``conn`` a raw channel for a stream call, or the error the call gets anywhere
    but alone as its connection's first message."""
    if single and conn.messages == 1 and not call.request.is_notification:
        assert conn.transport is not None
        conn.channel = Channel(conn.transport, conn.wait_writable)
        return None
    conn.server.counters["errors"] += 1
    reason = f"{call.method.name} must be the first call on its own connection"
    return protocol.encode(protocol.error_response(call.request.id, InvalidRequest(reason=reason)))


def batch_answer(answers: list[bytes]) -> bytes:
    return b"[" + b",".join(answers) + b"]"


def too_large(server: RpcServer) -> MessageTooLarge:
    server.counters["messages_too_large"] += 1
    return MessageTooLarge(max_bytes=server.limits.max_message_bytes)


class Context:
    """The CallContext handed to a handler (see wrennd.rpc.methods.CallContext)."""

    __slots__ = ("_conn", "_request", "channel", "kind")

    def __init__(
        self, conn: Connection, request: Request, kind: Kind, channel: Channel | None = None
    ) -> None:
        self._conn = conn
        self._request = request
        self.kind = kind
        self.channel = channel  # set for a stream call: the raw side of its connection

    @property
    def method(self) -> str:
        return self._request.method

    @property
    def request_id(self) -> RequestId:
        return self._request.id

    @property
    def is_notification(self) -> bool:
        return self._request.is_notification

    @property
    def peer(self) -> PeerCred:
        return self._conn.peer

    @property
    def connected(self) -> bool:
        return not self._conn.closed

    async def notify(self, method: str, params: dict[str, Any]) -> bool:
        if self._request.is_notification or self._conn.closed:
            return False
        message = protocol.notification(method, {"request_id": self._request.id, **params})
        if self.kind is Kind.LIFECYCLE:
            # Lifecycle work never waits on a client: drop progress it is not reading.
            if self._conn.writing_paused:
                return False
        elif not await self._conn.wait_writable():
            return False
        return self._conn.send(protocol.encode(message))

    async def progress(self, **fields: Any) -> bool:
        return await self.notify("progress", fields)


class Connection(asyncio.Protocol):
    def __init__(self, server: RpcServer) -> None:
        self.server = server
        self.limits = server.limits
        self.id = next(_ids)
        self.peer = _UNKNOWN_PEER
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.inflight = 0
        self.writing_paused = False
        self.reading_paused = False
        self._buf = bytearray()
        self._scanned = 0
        self._discarding = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._eof = False
        self._reads: set[asyncio.Task[Any]] = set()  # read calls: cancelled with the client
        self.messages = 0  # lines handled: a stream call must be the first
        self.channel: Channel | None = None  # set once upgraded to a raw channel
        self._batches: set[asyncio.Task[Any]] = set()  # batches collecting their answers

    # -- transport callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.peer = peer_credentials(transport.get_extra_info("socket"))
        transport.set_write_buffer_limits(high=self.limits.write_high_water)
        log.debug(
            "client connected",
            extra=kv(conn=self.id, pid=self.peer.pid, uid=self.peer.uid, gid=self.peer.gid),
        )
        if not self.server.admit(self):
            error = protocol.error_response(None, self.server.refusal())
            self.send(protocol.encode(error))
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        log.debug("client disconnected", extra=kv(conn=self.id, error=exc))
        if self.channel is not None:
            self.channel.lost()
        self._writable.set()  # wake streams waiting to write: they find the client gone
        for task in [*self._reads, *self._batches]:
            task.cancel()
        self.server.forget(self)

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._writable.clear()
        self._update_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._writable.set()
        self._process_buffer()

    def data_received(self, data: bytes) -> None:
        if self.channel is not None:
            self.channel.feed(data)
            return
        if self._discarding:
            newline = data.find(b"\n")
            if newline < 0:
                return
            data = data[newline + 1 :]
            self._discarding = False
        self._buf += data
        self._process_buffer()

    def eof_received(self) -> bool:
        if self.channel is not None:
            self.channel.feed_eof()
            return True  # the daemon may still be writing a download
        if peer_hung_up(self.transport):
            # The client is gone, not just done sending: its read work stops now.
            return False
        # Half-close: a last message may lack its newline; answer everything, then close.
        self._eof = True
        if self._buf and not self._discarding:
            self._buf += b"\n"
        self._process_buffer()
        return True

    def _close_if_done(self) -> None:
        if self._eof and self.inflight == 0 and not self._batches and not self._buf:
            assert self.transport is not None
            self.transport.close()

    # -- framing and limits --------------------------------------------------

    def _process_buffer(self) -> None:
        if self.channel is not None:
            return
        buf = self._buf
        start = 0
        # Bytes before _scanned hold no newline: a message arriving in many reads is
        # searched once, not once per read.
        scan = self._scanned
        while not self.closed and not self.writing_paused:
            if self.inflight >= self.limits.max_inflight:
                break
            newline = buf.find(b"\n", max(start, scan))
            if newline < 0:
                scan = len(buf)
                break
            line = bytes(buf[start:newline])
            start = newline + 1
            if len(line) > self.limits.max_message_bytes:
                self._send_error(None, too_large(self.server))
            elif line.strip():
                self._handle_line(line)
                if self.channel is not None:
                    # Upgraded: what follows the stream call is raw, not lines.
                    self.channel.feed(bytes(buf[start:]))
                    buf.clear()
                    return
        del buf[:start]
        self._scanned = max(0, scan - start)
        if self._scanned == len(buf) and len(buf) > self.limits.max_message_bytes:
            # No newline in sight and already too long: skip to the next newline.
            buf.clear()
            self._scanned = 0
            self._discarding = True
            self._send_error(None, too_large(self.server))
        self._update_reading()
        self._close_if_done()

    def _update_reading(self) -> None:
        if self.transport is None or self.closed or self.channel is not None:
            return
        pause = self.writing_paused or self.inflight >= self.limits.max_inflight
        if pause and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True
        elif not pause and self.reading_paused:
            self.transport.resume_reading()
            self.reading_paused = False

    # -- writing -------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(data + b"\n")
        return True

    def _send_error(self, request_id: RequestId, error: RpcError) -> None:
        self.server.counters["errors"] += 1
        self.send(protocol.encode(protocol.error_response(request_id, error)))

    async def wait_writable(self) -> bool:
        await self._writable.wait()
        return not self.closed

    # -- dispatch ------------------------------------------------------------

    def _handle_line(self, line: bytes) -> None:
        self.messages += 1
        try:
            message = protocol.decode(line)
        except ParseError as e:
            self._send_error(None, e)
            return
        if not isinstance(message, list):
            outcome = self._dispatch(message, single=True)
            if isinstance(outcome, bytes):
                self.send(outcome)
            return
        if not message:
            self._send_error(None, InvalidRequest(reason="empty batch"))
        elif len(message) > self.limits.max_inflight:
            reason = f"a batch holds at most {self.limits.max_inflight} requests"
            self._send_error(None, InvalidRequest(reason=reason, size=len(message)))
        else:
            self._start_batch(message)

    def _start_batch(self, batch: list[Any]) -> None:
        parts: list[bytes | Awaitable[bytes | None]] = []
        for item in batch:
            outcome = self._dispatch(item, single=False)
            if outcome is not None:
                parts.append(outcome)
        if not parts:
            return  # all notifications: nothing at all is returned
        if all(isinstance(p, bytes) for p in parts):
            self.send(batch_answer([p for p in parts if isinstance(p, bytes)]))
            return
        task = asyncio.ensure_future(self._finish_batch(parts))
        self._batches.add(task)
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        if not self.closed:
            self._close_if_done()

    async def _finish_batch(self, parts: list[bytes | Awaitable[bytes | None]]) -> None:
        answers = [a for a in [p if isinstance(p, bytes) else await p for p in parts] if a]
        if answers:
            self.send(batch_answer(answers))

    def _dispatch(self, item: object, single: bool) -> bytes | asyncio.Future[bytes | None] | None:
        """Start one call: an immediate answer, a future one (in a batch), or None; a single
        call started here sends its own answer when it finishes."""
        call = dispatch.prepare(self.server, item, self.peer)
        if not isinstance(call, dispatch.Call):
            return call
        if call.method.stream and (refusal := upgrade(self, call, single)) is not None:
            return refusal
        return self._start_call(call, single)

    def _start_call(self, call: dispatch.Call, single: bool) -> asyncio.Future[bytes | None]:
        context = Context(self, call.request, call.method.kind, self.channel)
        task = asyncio.ensure_future(self._run(call, context, single))
        self.inflight += 1
        task.add_done_callback(self._call_done)
        if call.method.kind is Kind.LIFECYCLE:
            self.server.own_lifecycle(task)
            # The batch or connection waiting on it may be cancelled; the work is not.
            return asyncio.shield(task)
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)
        return task

    def _call_done(self, _: asyncio.Future[bytes | None]) -> None:
        self.inflight -= 1
        if not self.closed:
            self._process_buffer()

    async def _run(self, call: dispatch.Call, context: Context, single: bool) -> bytes | None:
        answer = await dispatch.answer(self.server, call, context)
        if single and answer is not None:
            self.send(answer)
            if context.channel is not None:
                context.channel.answered()
            return None
        return answer

    # -- shutdown ------------------------------------------------------------

    def cancel_reads(self) -> list[asyncio.Task[Any]]:
        """Stop read work (its clients get ShuttingDown answers); return what to wait for."""
        tasks = list(self._reads)
        for task in tasks:
            task.cancel()
        return tasks + list(self._batches)
