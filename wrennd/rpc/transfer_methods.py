"""Files of any size through the socket: chunked uploads bound to a transfer id, streamed downloads.

Upload: ``sandbox.files.upload`` opens a transfer (the guest agent starts
writing a temporary file beside the target); ``sandbox.files.upload.chunk``
carries the bytes in order (``offset`` = bytes sent before it; a client may
keep several chunk calls in flight); ``sandbox.files.upload.finish`` checks
the size and, if given, the sha256, then the agent renames the file into
place.  ``sandbox.files.upload.abort``, a mismatch, the client's connection
closing or ``IDLE_TIMEOUT_S`` without a chunk abort it: the temporary file is
removed and the old file is untouched.

Flow control: the daemon keeps at most ``BUFFER_BYTES`` of a transfer; a chunk
call is answered only once its bytes are buffered, so a client whose window of
calls is full waits for the guest, and the daemon's memory does not grow with
the file.

Download: ``sandbox.files.download`` sends ``chunk`` notifications
(``offset``, base64 ``data``) as the guest reads the file, and answers with the
size and sha256.  Notifications wait for a client that does not read.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import math
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from wrennd.rpc import errors as rpc
from wrennd.rpc.exec_methods import b64
from wrennd.rpc.methods import CallContext, MethodTable
from wrennd.rpc.schemas import ID, PATH, obj, translated
from wrennd.sandbox import SandboxService

MAX_CHUNK = 2 << 20
DEFAULT_CHUNK = 1 << 20
BUFFER_BYTES = 4 << 20
IDLE_TIMEOUT_S = 60.0
_TRANSFER = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}

UPLOAD = obj(
    ["id", "path"],
    id=ID,
    path=PATH,
    mode={"type": "integer", "minimum": 0, "maximum": 0o7777},
)
CHUNK = obj(
    ["transfer", "offset", "data"],
    transfer=_TRANSFER,
    offset={"type": "integer", "minimum": 0},
    data={"type": "string", "description": f"base64, at most {MAX_CHUNK} bytes decoded"},
)
FINISH = obj(
    ["transfer", "size"], transfer=_TRANSFER, size={"type": "integer", "minimum": 0}, sha256=_SHA256
)
ABORT = obj(["transfer"], transfer=_TRANSFER)
DOWNLOAD = obj(
    ["id", "path"],
    id=ID,
    path=PATH,
    chunk_size={"type": "integer", "minimum": 4096, "maximum": MAX_CHUNK},
)


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
            self._check()
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

    def _check(self) -> None:
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

    async def close(self) -> None:
        async with self.cond:
            self.eof = True
            self.cond.notify_all()


class Transfers:
    def __init__(self, service: SandboxService) -> None:
        self.service = service
        self.uploads: dict[str, Upload] = {}

    def get(self, token: str) -> Upload:
        try:
            return self.uploads[token]
        except KeyError:
            raise rpc.NotFound("no such transfer (finished or aborted?)", transfer=token) from None

    async def begin(self, ctx: CallContext, p: dict[str, Any]) -> Upload:
        with translated():
            self.service.registry.running(p["id"], "write a file")
        up = Upload(secrets.token_hex(16), ctx)
        self.uploads[up.token] = up
        up.task = asyncio.ensure_future(self._write(up, p))
        up.task.add_done_callback(lambda t: t.cancelled() or t.exception())
        up.watcher = asyncio.ensure_future(self._watch(up))
        return up

    async def _write(self, up: Upload, p: dict[str, Any]) -> dict[str, Any]:
        try:
            with translated():
                # Files of any size: no deadline (a pause or a stopped VMM still ends it).
                async with self.service.guest(p["id"], math.inf) as guest:
                    info = await guest.write_file(p["path"], up.body(), mode=p.get("mode"))
            return info.to_json()
        except BaseException as e:
            await up.fail(str(e) or type(e).__name__, by_client=False)
            # Kept a while so that chunk calls still in flight learn why.
            asyncio.get_running_loop().call_later(IDLE_TIMEOUT_S, self.uploads.pop, up.token, None)
            raise
        self.uploads.pop(up.token, None)

    async def _watch(self, up: Upload) -> None:
        assert up.task is not None
        while not up.task.done():
            await asyncio.wait([up.task], timeout=1.0)
            if not up.ctx.connected:
                await up.fail("the client that opened the transfer went away")
            elif time.monotonic() - up.touched > IDLE_TIMEOUT_S and not up.eof:
                await up.fail(f"no chunk for {IDLE_TIMEOUT_S:.0f} s")

    async def finish(self, up: Upload, size: int, sha256: str | None) -> dict[str, Any]:
        digest = up.sha.hexdigest()
        if up.accepted != size:
            await up.fail(f"size {size} announced, {up.accepted} bytes received")
        elif sha256 is not None and sha256 != digest:
            await up.fail(f"sha256 {sha256} announced, {digest} received")
        else:
            await up.close()
        assert up.task is not None
        try:
            info = await up.task
        except Exception as e:
            if up.by_client:
                raise rpc.InvalidParams(f"transfer {up.token} failed: {up.failed}") from e
            raise
        finally:
            self.uploads.pop(up.token, None)
        return {**info, "sha256": digest, "size": up.accepted}

    async def abort(self, up: Upload) -> None:
        await up.fail("aborted by the client")
        assert up.task is not None
        with contextlib.suppress(Exception):
            await up.task
        self.uploads.pop(up.token, None)


async def download(service: SandboxService, ctx: CallContext, p: dict[str, Any]) -> Any:
    size = p.get("chunk_size", DEFAULT_CHUNK)
    sha, offset, pending = hashlib.sha256(), 0, bytearray()

    async def send(data: bytes) -> None:
        nonlocal offset
        sha.update(data)
        note = {"offset": offset, "data": base64.b64encode(data).decode("ascii")}
        offset += len(data)
        if not await ctx.notify("chunk", note):
            raise rpc.InvalidParams("the client stopped reading")

    with translated():
        async with service.guest(p["id"], math.inf) as guest:  # any size: no deadline
            async for part in guest.read_file(p["path"]):
                pending += part
                while len(pending) >= size:
                    await send(bytes(pending[:size]))
                    del pending[:size]
            if pending:
                await send(bytes(pending))
    return {"path": p["path"], "size": offset, "sha256": sha.hexdigest()}


def register(methods: MethodTable, service: SandboxService) -> None:
    transfers = Transfers(service)

    @methods.register("sandbox.files.upload", params=UPLOAD, mutating=True)
    async def upload(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Open an upload to ``path``; send its bytes with sandbox.files.upload.chunk."""
        up = await transfers.begin(ctx, p)
        return {"transfer": up.token, "chunk_size": DEFAULT_CHUNK, "max_chunk": MAX_CHUNK}

    @methods.register("sandbox.files.upload.chunk", params=CHUNK)
    async def chunk(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Bytes of an upload at ``offset``; answered once buffered (flow control)."""
        data = b64(p["data"], "data")
        if len(data) > MAX_CHUNK:
            raise rpc.InvalidParams(f"a chunk holds at most {MAX_CHUNK} bytes")
        return {"received": await transfers.get(p["transfer"]).put(p["offset"], data)}

    @methods.register("sandbox.files.upload.finish", params=FINISH, mutating=True)
    async def finish(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Check size (and sha256), then rename the file into place; answers its stat."""
        return await transfers.finish(transfers.get(p["transfer"]), p["size"], p.get("sha256"))

    @methods.register("sandbox.files.upload.abort", params=ABORT, mutating=True)
    async def abort(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Drop an upload: the old file stays as it was."""
        await transfers.abort(transfers.get(p["transfer"]))
        return {"aborted": True}

    @methods.register("sandbox.files.download", params=DOWNLOAD)
    async def download_(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Stream a file as ``chunk`` notifications; answers its size and sha256."""
        return await download(service, ctx, p)
