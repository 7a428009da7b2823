"""Streaming a 1 GiB file each way keeps the agent's memory bounded (measured, not assumed)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

from wrennd.guest.client import GuestClient

GIB = 1 << 30
CHUNK = 1 << 20
RSS_BOUND = 64 << 20  # growth of the agent's peak RSS over its idle peak


def _chunk(i: int) -> bytes:
    # Distinct per chunk, so a reordered or dropped chunk changes the digest.
    return i.to_bytes(8, "little") * (CHUNK // 8)


async def test_1gib_each_way_with_bounded_agent_rss(
    client: GuestClient, agent: object, agent_root: Path
) -> None:
    status = agent.status  # type: ignore[attr-defined]
    await client.health()
    idle_hwm = status("VmHWM")
    samples: list[int] = []

    async def sample() -> None:
        while True:
            samples.append(status("VmRSS"))
            await asyncio.sleep(0.05)

    sampler = asyncio.ensure_future(sample())
    sent = hashlib.sha256()

    async def upload() -> AsyncIterator[bytes]:
        for i in range(GIB // CHUNK):
            chunk = _chunk(i)
            sent.update(chunk)
            yield chunk

    try:
        info = await client.write_file("/big", upload())
        assert info.size == GIB
        upload_hwm = status("VmHWM")
        got, size = hashlib.sha256(), 0
        async for chunk in client.read_file("/big"):
            got.update(chunk)
            size += len(chunk)
        assert size == GIB and got.digest() == sent.digest()
        download_hwm = status("VmHWM")
    finally:
        sampler.cancel()
        # Do not leave 1 GiB in the temp dirs pytest keeps.
        await asyncio.to_thread((agent_root / "big").unlink, True)
    print(
        f"agent idle VmHWM {idle_hwm >> 20} MiB, after 1 GiB upload {upload_hwm >> 20} MiB,"
        f" after 1 GiB download {download_hwm >> 20} MiB, max sampled VmRSS"
        f" {max(samples) >> 20} MiB over {len(samples)} samples"
    )
    assert len(samples) > 10
    assert upload_hwm - idle_hwm < RSS_BOUND
    assert download_hwm - idle_hwm < RSS_BOUND
