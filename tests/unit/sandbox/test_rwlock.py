"""The sandbox lock: shared guest calls, exclusive lifecycle calls, writer preference,
preemption after a grace, and cancellation that never leaves it held."""

from __future__ import annotations

import asyncio

import pytest

from wrennd.sandbox.rwlock import SandboxLock


async def test_readers_share_and_writer_waits_for_them() -> None:
    lock = SandboxLock()
    order: list[str] = []
    release = asyncio.Event()

    async def reader(name: str) -> None:
        async with lock.shared():
            order.append(f"{name} in")
            await release.wait()
            order.append(f"{name} out")

    async def writer() -> None:
        async with lock:
            order.append("writer")

    readers = [asyncio.ensure_future(reader(n)) for n in ("a", "b")]
    await asyncio.sleep(0)
    assert lock.readers == 2
    w = asyncio.ensure_future(writer())
    await asyncio.sleep(0.01)
    assert "writer" not in order and lock.locked()
    release.set()
    await asyncio.gather(*readers, w)
    assert order[-1] == "writer" and order.index("a out") < order.index("writer")


async def test_waiting_writer_blocks_new_readers() -> None:
    lock = SandboxLock()
    first_in = asyncio.Event()
    release = asyncio.Event()
    order: list[str] = []

    async def long_reader() -> None:
        async with lock.shared():
            first_in.set()
            await release.wait()

    async def writer() -> None:
        async with lock.exclusive():
            order.append("writer")

    async def late_reader() -> None:
        async with lock.shared():
            order.append("late reader")

    r = asyncio.ensure_future(long_reader())
    await first_in.wait()
    w = asyncio.ensure_future(writer())
    await asyncio.sleep(0.01)
    late = asyncio.ensure_future(late_reader())
    await asyncio.sleep(0.01)
    assert order == []  # the late reader queues behind the writer
    release.set()
    await asyncio.gather(r, w, late)
    assert order == ["writer", "late reader"]


async def test_writer_preempts_readers_after_grace() -> None:
    lock = SandboxLock()
    preempted = asyncio.Event()
    inside = asyncio.Event()

    async def stubborn() -> None:
        async with lock.shared() as holder:
            holder.on_preempt(preempted.set)
            inside.set()
            await preempted.wait()

    r = asyncio.ensure_future(stubborn())
    await inside.wait()
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with lock.exclusive(preempt_after=0.2):
        waited = loop.time() - start
    await r
    assert 0.15 < waited < 2.0


async def test_cancelled_waiters_leave_the_lock_usable() -> None:
    lock = SandboxLock()
    release = asyncio.Event()

    async def holder() -> None:
        async with lock.shared():
            await release.wait()

    h = asyncio.ensure_future(holder())
    await asyncio.sleep(0)
    w = asyncio.ensure_future(lock.__aenter__())
    await asyncio.sleep(0.01)
    w.cancel()
    with pytest.raises(asyncio.CancelledError):
        await w
    assert not lock.locked()
    # A reader can enter again now that no writer waits.
    async with asyncio.timeout(1):
        async with lock.shared():
            pass
    release.set()
    await h
    async with asyncio.timeout(1):
        async with lock:
            pass
