"""The client's side of a raw transfer channel: a second socket connection whose first line
is a ``sandbox.files.stream`` call (docs/api.md, "Files of any size").

After the answer line the bytes go through the loop's socket calls directly
(``sock_sendall``, ``sock_recv``): no stream buffer copies them again on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from pathlib import Path
from typing import Any

from wrennd.rpc import protocol

RECV_SIZE = 1 << 20
SOCKET_BUFFER = 1 << 20  # more bytes in flight per wake-up on a busy host (capped by the kernel)


class ChannelError(Exception):
    """The channel could not be opened, or broke."""


class ChannelRefused(Exception):
    """The daemon answered the stream call with an error (a JSON-RPC error object)."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("message")))
        self.error = error


class ClientChannel:
    def __init__(self, sock: socket.socket, answer: dict[str, Any], pending: bytes) -> None:
        self._sock = sock
        self._pending = pending  # raw bytes that arrived with the answer line
        self.answer = answer

    @classmethod
    async def open(cls, path: Path, transfer: str) -> ClientChannel:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        try:
            await loop.sock_connect(sock, str(path))
            call = {"jsonrpc": "2.0", "id": 1, "method": "sandbox.files.stream"}
            line = protocol.encode({**call, "params": {"transfer": transfer}}) + b"\n"
            await loop.sock_sendall(sock, line)
            buf = b""
            while b"\n" not in buf:
                more = await loop.sock_recv(sock, 65536)
                if not more:
                    raise ChannelError("the daemon closed the transfer channel")
                buf += more
            head, _, pending = buf.partition(b"\n")
            answer = json.loads(head)
        except (OSError, ValueError) as e:
            sock.close()
            raise ChannelError(f"the transfer channel failed: {e}") from e
        except BaseException:
            sock.close()
            raise
        if not isinstance(answer, dict) or "result" not in answer:
            sock.close()
            error = answer.get("error") if isinstance(answer, dict) else None
            if not isinstance(error, dict):
                raise ChannelError("the daemon answered the stream call with no result")
            raise ChannelRefused(error)
        return cls(sock, dict(answer["result"]), pending)

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self._sock, data)

    async def end(self) -> None:
        """The end of an upload's bytes: half-close, then wait for the daemon to close once
        it took the last one."""
        self._sock.shutdown(socket.SHUT_WR)
        loop = asyncio.get_running_loop()
        while await loop.sock_recv(self._sock, 4096):
            pass

    async def recv(self) -> bytes:
        """The next bytes of a download; b"" at its end."""
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        return await asyncio.get_running_loop().sock_recv(self._sock, RECV_SIZE)

    def close(self) -> None:
        self._sock.close()
