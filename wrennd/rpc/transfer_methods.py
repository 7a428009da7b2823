"""Files of any size through the socket: transfers bound to an id, over JSON or a raw channel.

Upload: ``sandbox.files.upload`` opens a transfer (the guest agent starts
writing a temporary file beside the target).  Its bytes come either as
``sandbox.files.upload.chunk`` calls (base64, in order, ``offset`` = bytes sent
before it; a client may keep several in flight) or, fast, raw over a second
connection that calls ``sandbox.files.stream`` first (wrennd.rpc.channel) and
then half-closes at the end of the bytes.  ``sandbox.files.upload.finish``
checks the size and, if given, the sha256, then the agent renames the file into
place.  ``sandbox.files.upload.abort``, a mismatch, the opening connection
closing or the idle timeout abort it: the temporary file is removed and the
old file is untouched.

Download, raw: ``sandbox.files.download.open`` answers a transfer id, a second
connection calls ``sandbox.files.stream`` and reads the bytes to EOF, then
``sandbox.files.download.finish`` answers the size and sha256 (or why the
stream ended early).  Download over JSON: ``sandbox.files.download`` sends
``chunk`` notifications (``offset``, base64 ``data``) and answers the size and
sha256.  Either way the daemon sends only as fast as the client reads.
"""

from __future__ import annotations

import base64
import hashlib
import math
from typing import Any

from wrennd.rpc import errors as rpc
from wrennd.rpc.connection import Context
from wrennd.rpc.exec_methods import b64
from wrennd.rpc.methods import CallContext, MethodTable
from wrennd.rpc.schemas import ID, PATH, obj, translated
from wrennd.rpc.transfers import Transfers
from wrennd.sandbox import SandboxService

MAX_CHUNK = 2 << 20
DEFAULT_CHUNK = 1 << 20
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
DOWNLOAD_OPEN = obj(["id", "path"], id=ID, path=PATH)
STREAM = obj(["transfer"], transfer=_TRANSFER)


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
    transfers = Transfers(service, service.cfg.transfer_idle_timeout)
    _register_json(methods, service, transfers)

    @methods.register("sandbox.files.stream", params=STREAM, stream=True)
    async def stream(ctx: CallContext, p: dict[str, Any]) -> Any:
        """First call of a second connection: after its answer the connection carries the
        transfer's raw bytes (upload: send them, then half-close; download: read to EOF)."""
        channel = ctx.channel if isinstance(ctx, Context) else None
        if channel is None:
            raise rpc.InvalidRequest(reason="a raw channel needs the Unix socket")
        return transfers.attach(p["transfer"], channel)

    @methods.register("sandbox.files.download.open", params=DOWNLOAD_OPEN)
    async def download_open(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Open a raw download of ``path``: read it on a sandbox.files.stream connection."""
        return await transfers.open_download(ctx, p)

    @methods.register("sandbox.files.download.finish", params=STREAM)
    async def download_finish(ctx: CallContext, p: dict[str, Any]) -> Any:
        """After reading a raw download to EOF: its size and sha256, or why it ended early."""
        return await transfers.finish_download(transfers.get_download(p["transfer"]))


def _register_json(methods: MethodTable, service: SandboxService, transfers: Transfers) -> None:
    @methods.register("sandbox.files.upload", params=UPLOAD, mutating=True)
    async def upload(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Open an upload to ``path``; send its bytes with sandbox.files.upload.chunk calls or
        raw on a sandbox.files.stream connection."""
        up = await transfers.begin(ctx, p)
        return {"transfer": up.token, "chunk_size": DEFAULT_CHUNK, "max_chunk": MAX_CHUNK}

    @methods.register("sandbox.files.upload.chunk", params=CHUNK)
    async def chunk(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Bytes of an upload at ``offset``; answered once buffered (flow control)."""
        data = b64(p["data"], "data")
        if len(data) > MAX_CHUNK:
            raise rpc.InvalidParams(f"a chunk holds at most {MAX_CHUNK} bytes")
        up = transfers.get(p["transfer"])
        if up.channel is not None:
            raise rpc.InvalidParams(f"transfer {up.token} is fed by its raw channel")
        return {"received": await up.put(p["offset"], data)}

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
