"""Uploads and downloads through the daemon (docs/api.md, "Files of any size").

The bytes go raw over a second connection to the socket (``sandbox.files.stream``):
no base64, no JSON, the sockets' own flow control.  A daemon without raw
channels gets chunked JSON calls instead: uploads keep ``WINDOW`` chunk calls in
flight (the daemon answers a chunk once it is buffered, so the window is the flow
control), downloads arrive as ``chunk`` notifications.  Memory stays at a few
chunks on both sides whatever the file's size.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from wrennd import durable
from wrennd.rpc import errors as codes
from wrennd.rpc.client import Client, RemoteError
from wrennd.sdk.errors import TransferFailed

CHUNK = 1 << 20
WINDOW = 4
Progress = Callable[[int, int | None], None]  # (bytes done, total or None)


def file_chunks(path: Path, size: int = CHUNK) -> Iterable[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk


def _old_daemon(e: RemoteError) -> bool:
    return e.code == codes.METHOD_NOT_FOUND


async def _send_raw(
    client: Client,
    token: str,
    chunks: Iterable[bytes],
    progress: Progress | None,
    total: int | None,
) -> tuple[int, str] | None:
    """The chunks over the transfer's raw channel: (bytes sent, their sha256), or None from a
    daemon without raw channels (nothing was sent)."""
    try:
        channel = await client.open_channel(token)
    except RemoteError as e:
        if _old_daemon(e):
            return None
        raise
    sha, offset = hashlib.sha256(), 0
    try:
        for chunk in chunks:
            await channel.send(chunk)
            sha.update(chunk)
            offset += len(chunk)
            if progress is not None:
                progress(offset, total)
        await channel.end()  # the daemon closes once it took the last byte
    except ConnectionError as e:
        # The daemon ended the transfer: abort answers why (or the bytes were cut short).
        await client.call("sandbox.files.upload.abort", {"transfer": token})
        raise TransferFailed(f"the transfer channel closed after {offset} bytes") from e
    finally:
        channel.close()
    return offset, sha.hexdigest()


async def upload(
    client: Client,
    sandbox_id: str,
    remote: str,
    chunks: Iterable[bytes],
    *,
    mode: int | None = None,
    total: int | None = None,
    progress: Progress | None = None,
    raw: bool = True,
) -> dict[str, Any]:
    """Send ``chunks`` to ``remote``; the file replaces the old one only if all arrived.
    ``raw=False`` sends chunked JSON calls even where a raw channel is possible."""
    params: dict[str, Any] = {"id": sandbox_id, "path": remote}
    if mode is not None:
        params["mode"] = mode
    token = (await client.call("sandbox.files.upload", params))["transfer"]
    if raw and client.path is not None:
        try:
            sent = await _send_raw(client, token, chunks, progress, total)
        except BaseException:
            with contextlib.suppress(Exception):  # gone already if the daemon ended it
                await client.call("sandbox.files.upload.abort", {"transfer": token})
            raise
        if sent is not None:
            done = {"transfer": token, "size": sent[0], "sha256": sent[1]}
            return dict(await client.call("sandbox.files.upload.finish", done))
    window = asyncio.Semaphore(WINDOW)
    inflight: set[asyncio.Task[Any]] = set()
    sha, offset = hashlib.sha256(), 0
    try:
        for chunk in chunks:
            await window.acquire()
            for task in [t for t in inflight if t.done()]:
                inflight.discard(task)
                task.result()  # a refused chunk stops the upload now
            note = {"transfer": token, "offset": offset, "data": base64.b64encode(chunk).decode()}
            task = asyncio.ensure_future(client.call("sandbox.files.upload.chunk", note))
            task.add_done_callback(lambda _: window.release())
            inflight.add(task)
            sha.update(chunk)
            offset += len(chunk)
            if progress is not None:
                progress(offset, total)
        await asyncio.gather(*inflight)
        done = {"transfer": token, "size": offset, "sha256": sha.hexdigest()}
        return dict(await client.call("sandbox.files.upload.finish", done))
    except BaseException:
        for task in inflight:
            task.cancel()
        await asyncio.gather(*inflight, return_exceptions=True)
        # The transfer may already be gone; the first error is the news.
        with contextlib.suppress(Exception):
            await client.call("sandbox.files.upload.abort", {"transfer": token})
        raise


class _Sink:
    """Where downloaded chunks go, checked for order; hashes as it writes."""

    def __init__(self, write: Callable[[bytes], None], progress: Progress | None) -> None:
        self.write = write
        self.progress = progress
        self.sha = hashlib.sha256()
        self.offset = 0
        self.error: Exception | None = None

    def __call__(self, method: str, params: dict[str, Any]) -> None:
        if method != "chunk" or self.error is not None:
            return
        if params.get("offset") != self.offset:
            self.error = TransferFailed(f"chunk at {params.get('offset')}, expected {self.offset}")
            return
        data = params["data"]
        if isinstance(data, str):  # a JSON chunk notification
            data = base64.b64decode(data)
        self.write(data)
        self.sha.update(data)
        self.offset += len(data)
        if self.progress is not None:
            self.progress(self.offset, None)

    def check(self, result: dict[str, Any]) -> None:
        if self.error is not None:
            raise self.error
        if result["size"] != self.offset or result["sha256"] != self.sha.hexdigest():
            raise TransferFailed(
                f"received {self.offset} bytes (sha256 {self.sha.hexdigest()}), "
                f"the daemon sent {result['size']} ({result['sha256']})"
            )


async def _download_raw(
    client: Client, sandbox_id: str, remote: str, sink: _Sink
) -> dict[str, Any] | None:
    """The file over a raw channel into ``sink``; None from a daemon without raw channels."""
    try:
        params = {"id": sandbox_id, "path": remote}
        opened = await client.call("sandbox.files.download.open", params)
    except RemoteError as e:
        if _old_daemon(e):
            return None
        raise
    token = opened["transfer"]
    channel = await client.open_channel(token)
    try:
        while data := await channel.recv():
            sink("chunk", {"offset": sink.offset, "data": data})
    except ConnectionError:
        pass  # cut short: finish says why
    finally:
        channel.close()
    return dict(await client.call("sandbox.files.download.finish", {"transfer": token}))


async def download_to(
    client: Client,
    sandbox_id: str,
    remote: str,
    write: Callable[[bytes], None],
    progress: Progress | None = None,
    raw: bool = True,
) -> dict[str, Any]:
    sink = _Sink(write, progress)
    if raw and client.path is not None:
        got = await _download_raw(client, sandbox_id, remote, sink)
        if got is not None:
            sink.check(got)
            return got
    params = {"id": sandbox_id, "path": remote, "chunk_size": CHUNK}
    result = dict(await client.call("sandbox.files.download", params, on_notification=sink))
    sink.check(result)
    return result


async def download(
    client: Client,
    sandbox_id: str,
    remote: str,
    local: Path,
    *,
    mode: int = 0o644,
    progress: Progress | None = None,
    raw: bool = True,
) -> dict[str, Any]:
    """Fetch ``remote`` into ``local``: written beside it, renamed into place when complete."""
    with durable.replacing(local, mode) as fd:
        return await download_to(
            client, sandbox_id, remote, lambda b: durable.write_all(fd, b), progress, raw
        )


def local_size(path: Path) -> int:
    return os.stat(path).st_size
