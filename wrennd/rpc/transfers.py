"""Transfers bound to an id: uploads fed by chunk calls or a raw channel, raw downloads.

An upload's bytes go to the guest agent as they come (it writes a temporary
file beside the target and renames it only on finish), through a buffer of at
most ``BUFFER_BYTES``: chunk calls are answered, and a raw channel is read, only
as fast as the guest takes the bytes, so the daemon's memory never follows the
file's size.  A download's bytes go from the agent to the channel as the client
reads them.

A transfer id is a one-time token: it admits one raw channel, and it ends with
``finish``, ``abort``, a failure, the opening connection closing, or
``idle_timeout`` seconds without progress (an unused download expires then too).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from wrennd.rpc import errors as rpc
from wrennd.rpc.channel import Channel, ChannelClosed
from wrennd.rpc.methods import CallContext
from wrennd.rpc.schemas import translated
from wrennd.rpc.upload import Upload
from wrennd.sandbox import SandboxService


@dataclass
class Download:
    token: str
    ctx: CallContext
    sandbox: str
    path: str
    touched: float = field(default_factory=time.monotonic)
    task: asyncio.Task[dict[str, Any]] | None = None
    watcher: asyncio.Task[None] | None = None


class Transfers:
    def __init__(self, service: SandboxService, idle_timeout: float) -> None:
        self.service = service
        self.idle_timeout = idle_timeout
        self.uploads: dict[str, Upload] = {}
        self.downloads: dict[str, Download] = {}

    def get(self, token: str) -> Upload:
        try:
            return self.uploads[token]
        except KeyError:
            raise rpc.NotFound("no such transfer (finished or aborted?)", transfer=token) from None

    # -- uploads ----------------------------------------------------------------

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
            asyncio.get_running_loop().call_later(
                self.idle_timeout, self.uploads.pop, up.token, None
            )
            raise
        self.uploads.pop(up.token, None)

    async def _watch(self, up: Upload) -> None:
        assert up.task is not None
        while not up.task.done():
            await asyncio.wait([up.task], timeout=min(1.0, self.idle_timeout / 4))
            if not up.ctx.connected:
                await up.fail("the client that opened the transfer went away")
            elif time.monotonic() - up.touched > self.idle_timeout and not up.eof:
                await up.fail(f"no bytes for {self.idle_timeout:g} s")

    async def finish(self, up: Upload, size: int, sha256: str | None) -> dict[str, Any]:
        if up.feeder is not None:
            await asyncio.wait([up.feeder])  # every byte of the channel is counted first
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
        """Drop the upload; if it had failed already, raise why (a client whose raw channel
        was cut learns the reason here)."""
        await up.fail("aborted by the client")
        assert up.task is not None
        try:
            await asyncio.wait([up.task])
            if not up.by_client:
                up.check()
        finally:
            self.uploads.pop(up.token, None)

    # -- raw channels -----------------------------------------------------------

    def attach(self, token: str, channel: Channel) -> dict[str, Any]:
        """Bind a raw channel to the transfer ``token`` (once); what the channel carries."""
        if token in self.downloads:
            dl = self.downloads[token]
            if dl.task is not None:
                raise rpc.InvalidParams(f"transfer {token} already has its channel")
            channel.claimed = True
            dl.task = asyncio.ensure_future(self._send(dl, channel))
            dl.task.add_done_callback(lambda t: t.cancelled() or t.exception())
            return {"transfer": token, "direction": "download"}
        up = self.get(token)
        up.check()
        if up.channel is not None or up.eof:
            raise rpc.InvalidParams(f"transfer {token} already has its channel or has ended")
        channel.claimed = True
        up.channel = channel
        up.feeder = asyncio.ensure_future(self._feed(up, channel))
        return {"transfer": token, "direction": "upload", "offset": up.accepted}

    async def _feed(self, up: Upload, channel: Channel) -> None:
        """The channel's bytes into the upload, in order, until the client's end of data."""
        try:
            while data := await channel.read():
                await up.put(up.accepted, data)
        except rpc.RpcError:
            channel.abort()  # the upload failed: the client learns why from finish
        else:
            channel.close()

    async def _send(self, dl: Download, channel: Channel) -> dict[str, Any]:
        sha, size = hashlib.sha256(), 0
        try:
            with translated():
                async with self.service.guest(dl.sandbox, math.inf) as guest:
                    async for part in guest.read_file(dl.path):
                        sha.update(part)
                        size += len(part)
                        await channel.write(part)
                        dl.touched = time.monotonic()
        except ChannelClosed:
            channel.abort()
            raise rpc.InvalidParams("the client closed the channel before the end") from None
        except BaseException:
            channel.abort()  # a short stream: the client must not take it for the file
            raise
        channel.close()
        return {"path": dl.path, "size": size, "sha256": sha.hexdigest()}

    # -- downloads --------------------------------------------------------------

    async def open_download(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        with translated():
            async with self.service.guest(p["id"]) as guest:
                info = await guest.stat(p["path"])  # a missing file fails here, not later
        dl = Download(secrets.token_hex(16), ctx, p["id"], p["path"])
        self.downloads[dl.token] = dl
        dl.watcher = asyncio.ensure_future(self._watch_download(dl))
        return {"transfer": dl.token, "size": info.size}

    def get_download(self, token: str) -> Download:
        try:
            return self.downloads[token]
        except KeyError:
            raise rpc.NotFound("no such transfer (finished or expired?)", transfer=token) from None

    async def _watch_download(self, dl: Download) -> None:
        """Drops a download whose opener left, that was never attached, stalled, or was
        never collected by finish."""
        while dl.token in self.downloads:
            await asyncio.sleep(min(1.0, self.idle_timeout / 4))
            idle = time.monotonic() - dl.touched > self.idle_timeout
            if dl.task is not None and dl.task.done():
                if idle:
                    self.downloads.pop(dl.token, None)
                continue
            if dl.ctx.connected and not idle:
                continue
            if dl.task is None:
                self.downloads.pop(dl.token, None)  # the token expires unused
            else:
                dl.task.cancel()
                dl.touched = time.monotonic()  # kept a while: finish learns why

    async def finish_download(self, dl: Download) -> dict[str, Any]:
        if dl.task is None:
            raise rpc.InvalidParams(f"transfer {dl.token} has no channel yet")
        try:
            return await asyncio.shield(dl.task)
        except asyncio.CancelledError:
            if dl.task.cancelled():  # ended by the watcher, not this call's cancellation
                raise rpc.InvalidParams(f"transfer {dl.token} stalled or its client left") from None
            raise
        finally:
            self.downloads.pop(dl.token, None)
