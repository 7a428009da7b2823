"""Chunks of one upload, sent concurrently, reach the guest in offset order whatever
order their calls run in, while the buffer is full (a regression: a late chunk could
overtake earlier ones that were accepted and waiting for room)."""

from __future__ import annotations

import asyncio
import hashlib
import random
from typing import Any

import pytest

from wrennd.rpc import upload
from wrennd.rpc.upload import Upload

CHUNK = 1024


async def test_concurrent_chunks_keep_their_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upload, "BUFFER_BYTES", 2 * CHUNK)  # full after two chunks
    rng = random.Random(7)
    chunks = [rng.randbytes(CHUNK) for _ in range(64)]
    up = Upload("t", ctx=Any)  # type: ignore[arg-type]  # put/body never use the context
    received: list[bytes] = []

    async def reader() -> None:
        async for chunk in up.body():
            received.append(chunk)
            await asyncio.sleep(rng.random() / 1000)  # a slow guest: the buffer stays full

    async def send(i: int) -> None:
        await asyncio.sleep(rng.random() / 200)  # calls arrive in a scrambled order
        await up.put(i * CHUNK, chunks[i])

    drain = asyncio.ensure_future(reader())
    order = list(range(len(chunks)))
    rng.shuffle(order)
    await asyncio.gather(*(send(i) for i in order))
    await up.close()
    await drain
    assert b"".join(received) == b"".join(chunks)
    assert up.sha.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()
