from __future__ import annotations

import asyncio
import time

from wrennd.sandbox.reaper import Reaper


async def test_expires_in_deadline_order_and_once() -> None:
    fired: list[tuple[str, float]] = []

    async def on_expire(sid: str) -> None:
        fired.append((sid, time.time()))

    r = Reaper(on_expire)
    r.start()
    now = time.time()
    r.set("b", now + 0.10)
    r.set("a", now + 0.05)
    r.set("c", now + 10)
    await asyncio.sleep(0.3)
    await r.stop()
    assert [sid for sid, _ in fired] == ["a", "b"]
    assert all(t >= now + 0.05 for _, t in fired)
    assert r.deadline("c") is not None and r.deadline("a") is None


async def test_rearm_and_disarm() -> None:
    fired: list[str] = []

    async def on_expire(sid: str) -> None:
        fired.append(sid)

    r = Reaper(on_expire)
    r.start()
    now = time.time()
    r.set("x", now + 0.05)
    r.set("x", now + 0.20)  # extended: the old deadline must not fire
    r.set("y", now + 0.05)
    r.set("y", None)  # disarmed
    await asyncio.sleep(0.12)
    assert fired == []
    await asyncio.sleep(0.2)
    await r.stop()
    assert fired == ["x"]


async def test_failing_action_does_not_stop_the_reaper() -> None:
    fired: list[str] = []

    async def on_expire(sid: str) -> None:
        fired.append(sid)
        if sid == "bad":
            raise RuntimeError("pause failed")

    r = Reaper(on_expire)
    r.start()
    now = time.time()
    r.set("bad", now)
    r.set("good", now + 0.05)
    await asyncio.sleep(0.2)
    await r.stop()
    assert fired == ["bad", "good"]


async def test_stop_waits_for_running_actions() -> None:
    done = asyncio.Event()

    async def on_expire(sid: str) -> None:
        await asyncio.sleep(0.1)
        done.set()

    r = Reaper(on_expire)
    r.start()
    r.set("x", time.time())
    await asyncio.sleep(0.02)
    await r.stop()
    assert done.is_set()
