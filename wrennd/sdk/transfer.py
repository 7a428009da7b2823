"""Uploads and downloads over the daemon's chunked transfer methods (docs/api.md, "Files").

Uploads keep ``WINDOW`` chunk calls in flight: the daemon answers a chunk once
it is buffered, so the window is the flow control and memory stays at a few
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
from wrennd.rpc.client import Client
from wrennd.sdk.errors import TransferFailed

CHUNK = 1 << 20
WINDOW = 4
Progress = Callable[[int, int | None], None]  # (bytes done, total or None)


def file_chunks(path: Path, size: int = CHUNK) -> Iterable[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk


async def upload(
    client: Client,
    sandbox_id: str,
    remote: str,
    chunks: Iterable[bytes],
    *,
    mode: int | None = None,
    total: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Send ``chunks`` to ``remote``; the file replaces the old one only if all arrived."""
    params: dict[str, Any] = {"id": sandbox_id, "path": remote}
    if mode is not None:
        params["mode"] = mode
    token = (await client.call("sandbox.files.upload", params))["transfer"]
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
        data = base64.b64decode(params["data"])
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


async def download_to(
    client: Client,
    sandbox_id: str,
    remote: str,
    write: Callable[[bytes], None],
    progress: Progress | None = None,
) -> dict[str, Any]:
    sink = _Sink(write, progress)
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
) -> dict[str, Any]:
    """Fetch ``remote`` into ``local``: written beside it, renamed into place when complete."""
    with durable.replacing(local, mode) as fd:
        return await download_to(
            client, sandbox_id, remote, lambda b: durable.write_all(fd, b), progress
        )


def local_size(path: Path) -> int:
    return os.stat(path).st_size
