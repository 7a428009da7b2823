"""The asyncio wrapper runs blocking work off the event loop and leaves no thread behind."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from wrennd.storage import AsyncStorage, BaseImageMissing, CopyBackend, open_storage


def storage_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("wrennd-storage")]


async def test_create_does_not_block_the_loop(tmp_path: Path) -> None:
    base = tmp_path / "base.img"
    base.write_bytes(b"\x11" * (64 << 20))
    async with AsyncStorage(CopyBackend(tmp_path / "state")) as storage:
        task = asyncio.create_task(storage.create("a1", base))
        ticks = 0
        while not task.done():
            ticks += 1
            await asyncio.sleep(0.001)
        rec = task.result()
        # A blocking create would have run to completion inside one loop step.
        assert ticks >= 2
        assert rec.drive.stat().st_size == 64 << 20
        await storage.detach("a1")
        assert (await storage.attach("a1")).attached
        dest = tmp_path / "flat.img"
        await storage.flatten("a1", dest)
        assert dest.read_bytes() == base.read_bytes()
        assert (await storage.record("a1")).sandbox_id == "a1"
        await storage.remove("a1")
        await storage.delete_base(base)
        with pytest.raises(BaseImageMissing):
            await storage.create("a2", base)
        assert (await storage.cleanup_stale([])).temp_files == []
    assert storage_threads() == []


async def test_open_storage_probes_off_the_loop(tmp_path: Path) -> None:
    storage = await open_storage("copy", tmp_path)
    try:
        assert storage.name == "copy"
    finally:
        await storage.aclose()
    assert storage_threads() == []


async def test_cancelled_create_still_finishes_cleanly(tmp_path: Path) -> None:
    base = tmp_path / "base.img"
    base.write_bytes(b"\x22" * (128 << 20))
    storage = AsyncStorage(CopyBackend(tmp_path / "state"))
    task = asyncio.create_task(storage.create("c1", base))
    layer = storage.backend.sandbox_dir("c1") / "rootfs.ext4"
    # Polls the filesystem: the only signal the backend gives that its copy has started.
    while not layer.exists():  # noqa: ASYNC110
        await asyncio.sleep(0.0005)
    if task.cancel():  # False only if the copy already finished: nothing to check then
        with pytest.raises(asyncio.CancelledError):
            await task
    await storage.aclose()  # waits for the copy already running
    rec = storage.backend.record("c1")
    assert rec.layer.read_bytes() == base.read_bytes()
    assert storage_threads() == []
