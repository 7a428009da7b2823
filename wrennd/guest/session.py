"""Host side of an interactive command (the agent's ``GET /exec/session`` WebSocket).

A session streams stdin in and output out while the command runs, optionally
on a pseudo-terminal that can be resized.  Leaving the ``async with`` closes
the socket, and the agent kills the command's process group.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import aiohttp

from wrennd.guest import protocol as p


class SessionError(Exception):
    """The agent refused the session or one of its messages."""

    def __init__(self, code: str, message: str, details: dict[str, Any]) -> None:
        super().__init__(f"guest agent: {message} ({code})")
        self.code = code
        self.message = message
        self.details = details


class GuestSession:
    """One command connected to a WebSocket; ``events()`` yields Started, Output..., Exited."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws

    @classmethod
    async def open(
        cls,
        http: aiohttp.ClientSession,
        url: str,
        spec: p.CommandSpec,
        *,
        pty: bool = False,
        rows: int = 24,
        cols: int = 80,
    ) -> GuestSession:
        ws = await http.ws_connect(url, max_msg_size=16 << 20, autoping=True)
        first = {**spec.to_json(), "pty": pty, "rows": rows, "cols": cols}
        first.pop("stdin", None)
        await ws.send_str(json.dumps(first))
        return cls(ws)

    async def events(self) -> AsyncIterator[p.Event]:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            obj = p.parse_object(msg.data)
            if obj.get("type") == "error":
                details = {k: v for k, v in obj.items() if k not in ("type", "code", "message")}
                raise SessionError(str(obj.get("code")), str(obj.get("message")), details)
            event = p.event_from_json(obj)
            yield event
            if isinstance(event, p.Exited):
                return

    async def send(self, data: bytes) -> None:
        await self._ws.send_str(json.dumps({"type": "stdin", "data": p.b64encode(data)}))

    async def eof(self) -> None:
        await self._ws.send_str('{"type": "eof"}')

    async def resize(self, rows: int, cols: int) -> None:
        await self._ws.send_str(json.dumps({"type": "resize", "rows": rows, "cols": cols}))

    async def signal(self, sig: int | str) -> None:
        await self._ws.send_str(json.dumps({"type": "signal", "signal": sig}))

    async def close(self) -> None:
        await self._ws.close()

    async def __aenter__(self) -> GuestSession:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
