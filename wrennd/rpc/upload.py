"""One upload's bytes between the client and the guest agent: ordered, hashed, bounded.

Bytes enter with ``put`` (from chunk calls, which may run concurrently, or from
a raw channel) and leave through ``body``, the request body the agent reads.
At most ``BUFFER_BYTES`` wait between the two: ``put`` returns only once its
bytes found room, which is the flow control of both ways in.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from wrennd.rpc import errors as rpc
from wrennd.rpc.channel import Channel
from wrennd.rpc.methods import CallContext

BUFFER_BYTES = 4 << 20


class Aborted(Exception):
    """Ends the body the agent reads: it then drops the temporary file."""


@dataclass
class Upload:
    token: str
    ctx: CallContext
    buffer: collections.deque[bytes] = field(default_factory=collections.deque)
    buffered: int = 0
    accepted: int = 0
    eof: bool = False
    failed: str | None = None
    by_client: bool = False
    touched: float = field(default_factory=time.monotonic)
    sha: Any = field(default_factory=hashlib.sha256)
    cond: asyncio.Condition = field(default_factory=asyncio.Condition)
    task: asyncio.Task[Any] | None = None
    watcher: asyncio.Task[None] | None = None
    channel: Channel | None = None  # the raw channel feeding it, once attached
    feeder: asyncio.Task[None] | None = None

    async def put(self, offset: int, data: bytes) -> int:
        """Buffer one chunk in its place in the stream; waits for its turn and for room.

        Only the chunk at the stream's end may enter, and it is accepted, hashed and
        queued without giving up the lock: a later chunk can never overtake it (chunk
        calls run concurrently, and wake-ups do not keep their order)."""
        async with self.cond:
            await self.cond.wait_for(
                lambda: (
                    self.failed is not None
                    or self.accepted > offset
                    or (self.accepted == offset and self.buffered < BUFFER_BYTES)
                )
            )
            self.check()
            if offset != self.accepted:
                raise rpc.InvalidParams(
                    f"chunk at offset {offset}: {self.accepted} bytes were already received",
                    errors=[{"path": "/offset", "message": "duplicate or overlapping chunk"}],
                )
            self.accepted += len(data)
            self.buffer.append(data)
            self.buffered += len(data)
            self.sha.update(data)
            self.touched = time.monotonic()
            self.cond.notify_all()
        return offset + len(data)

    def check(self) -> None:
        """Raise why the upload failed, if it did: the guest's own error when it has one."""
        if self.failed is None:
            return
        task = self.task
        if not self.by_client and task is not None and task.done() and not task.cancelled():
            error = task.exception()
            if isinstance(error, rpc.RpcError):
                raise error  # the guest's own reason (no space, no such directory, ...)
        raise rpc.InvalidParams(f"transfer {self.token} failed: {self.failed}")

    async def body(self) -> AsyncIterator[bytes]:
        """The bytes, in order, as the agent reads them."""
        while True:
            async with self.cond:
                await self.cond.wait_for(lambda: bool(self.buffer) or self.eof or bool(self.failed))
                if self.failed is not None:
                    raise Aborted(self.failed)
                if not self.buffer:
                    return
                chunk = self.buffer.popleft()
                self.buffered -= len(chunk)
                self.cond.notify_all()
            yield chunk

    async def fail(self, why: str, by_client: bool = True) -> None:
        async with self.cond:
            if self.failed is None:
                self.failed = why
                self.by_client = by_client
            self.cond.notify_all()
        if self.channel is not None:
            self.channel.abort()  # a feeder waiting for bytes ends now

    async def close(self) -> None:
        async with self.cond:
            self.eof = True
            self.cond.notify_all()
