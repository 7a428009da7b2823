"""JSON-RPC over HTTP: ``POST /rpc`` (one call or a batch) and a WebSocket at ``/rpc``.

Every call goes through wrennd.rpc.dispatch, as the Unix socket's do: the same
schemas, errors, counters and observers.  The socket's limits hold here too:
a message is at most ``max_message_bytes``, a batch at most ``max_inflight``
calls, and a WebSocket runs at most ``max_inflight`` calls at once (it stops
reading past that).  Lifecycle calls are owned by the RPC server and finish
when the client goes; read calls are cancelled with it (and at shutdown).
Notifications (progress, exec output) reach WebSocket clients only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from wrennd.rpc import dispatch, protocol
from wrennd.rpc.connection import peer_credentials
from wrennd.rpc.errors import InvalidRequest, MessageTooLarge, ParseError, RpcError
from wrennd.rpc.methods import Kind, PeerCred
from wrennd.rpc.protocol import RequestId
from wrennd.rpc.server import RpcServer

JSON = "application/json"
Alive = Callable[[], bool]


class Channel:
    """A WebSocket's way back to its client, for answers and notifications."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, high_water: int) -> None:
        self.ws = ws
        self.transport = request.transport
        self.high_water = high_water

    @property
    def open(self) -> bool:
        return not self.ws.closed

    def backlogged(self) -> bool:
        t = self.transport
        return t is None or t.get_write_buffer_size() > self.high_water

    async def send(self, data: bytes) -> bool:
        if self.ws.closed:
            return False
        await self.ws.send_str(data.decode())
        return True


class HttpContext:
    """The CallContext of a call that came over HTTP; no channel for a POST."""

    __slots__ = ("_alive", "_call", "_channel", "_peer", "kind")

    def __init__(
        self, call: dispatch.Call, peer: PeerCred, channel: Channel | None, alive: Alive
    ) -> None:
        self._call = call
        self._peer = peer
        self._channel = channel
        self._alive = alive
        self.kind = call.method.kind

    @property
    def method(self) -> str:
        return self._call.request.method

    @property
    def request_id(self) -> RequestId:
        return self._call.request.id

    @property
    def is_notification(self) -> bool:
        return self._call.request.is_notification

    @property
    def peer(self) -> PeerCred:
        return self._peer

    @property
    def connected(self) -> bool:
        return self._alive()

    async def notify(self, method: str, params: dict[str, Any]) -> bool:
        channel = self._channel
        if channel is None or self.is_notification or not channel.open:
            return False
        # Lifecycle work never waits on a client: drop progress it is not reading.
        if self.kind is Kind.LIFECYCLE and channel.backlogged():
            return False
        message = protocol.notification(method, {"request_id": self.request_id, **params})
        return await channel.send(protocol.encode(message))

    async def progress(self, **fields: Any) -> bool:
        return await self.notify("progress", fields)


class Bridge:
    def __init__(self, server: RpcServer) -> None:
        self.server = server
        self.limits = server.limits
        self.sockets: set[web.WebSocketResponse] = set()

    async def close_sockets(self) -> None:
        """Close every WebSocket (at stop): an open page must not hold the daemon up."""
        for ws in list(self.sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"wrennd is stopping")

    def _error(self, error: RpcError, request_id: RequestId = None) -> bytes:
        self.server.counters["errors"] += 1
        return protocol.encode(protocol.error_response(request_id, error))

    async def _run(self, call: dispatch.Call, context: HttpContext) -> bytes | None:
        task = asyncio.ensure_future(dispatch.answer(self.server, call, context))
        if call.method.kind is Kind.LIFECYCLE:
            self.server.own_lifecycle(task)
            return await asyncio.shield(task)
        self.server.own_read(task)
        return await task

    async def _message(
        self, raw: bytes, peer: PeerCred, channel: Channel | None, alive: Alive
    ) -> bytes | None:
        """One framed message (a call or a batch): its encoded answer, or None."""
        try:
            message = protocol.decode(raw)
        except ParseError as e:
            return self._error(e)
        items = message if isinstance(message, list) else [message]
        if not items:
            return self._error(InvalidRequest(reason="empty batch"))
        if len(items) > self.limits.max_inflight:
            reason = f"a batch holds at most {self.limits.max_inflight} requests"
            return self._error(InvalidRequest(reason=reason, size=len(items)))
        pending: list[Awaitable[bytes | None]] = []
        for item in items:
            call = dispatch.prepare(self.server, item, peer)
            if isinstance(call, dispatch.Call):
                pending.append(self._run(call, HttpContext(call, peer, channel, alive)))
            elif call is not None:
                pending.append(_ready(call))
        answers = [a for a in await asyncio.gather(*pending) if a is not None]
        if not answers:
            return None
        if isinstance(message, list):
            return b"[" + b",".join(answers) + b"]"
        return answers[0]

    async def post(self, request: web.Request) -> web.StreamResponse:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            error = MessageTooLarge(max_bytes=self.limits.max_message_bytes)
            self.server.counters["messages_too_large"] += 1
            return web.Response(body=self._error(error), content_type=JSON)
        transport = request.transport

        def alive() -> bool:  # the client still waits for this POST's answer
            return transport is not None and not transport.is_closing()

        answer = await self._message(raw, _peer(request), None, alive)
        if answer is None:
            return web.Response(status=204)
        return web.Response(body=answer, content_type=JSON)

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=self.limits.max_message_bytes, heartbeat=30)
        await ws.prepare(request)
        self.sockets.add(ws)
        peer = _peer(request)
        channel = Channel(ws, request, self.limits.write_high_water)
        gate = asyncio.Semaphore(self.limits.max_inflight)
        running: set[asyncio.Task[None]] = set()

        async def one(raw: bytes) -> None:
            try:
                answer = await self._message(raw, peer, channel, lambda: channel.open)
                if answer is not None:
                    await channel.send(answer)
            finally:
                gate.release()

        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                await gate.acquire()  # past max_inflight, stop reading: the client waits
                data = msg.data.encode() if isinstance(msg.data, str) else msg.data
                task = asyncio.ensure_future(one(data))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            self.sockets.discard(ws)
            for task in running:
                task.cancel()  # read work ends with its client; lifecycle work is shielded
        return ws


def _peer(request: web.Request) -> PeerCred:
    """SO_PEERCRED on a Unix socket listener; unknown over TCP."""
    transport = request.transport
    return peer_credentials(transport.get_extra_info("socket") if transport else None)


async def _ready(answer: bytes) -> bytes:
    return answer
