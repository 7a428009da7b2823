"""The reaper fires each deadline once, in order, on an injected clock.

Time is a FakeClock the test moves by hand, so what "has not fired yet" means does
not depend on how busy the machine is.  After each move the test arms a barrier
deadline at the current fake time and waits for it: the reaper pops every due
deadline in one pass, in deadline order, so once the barrier has fired, every
deadline before it has fired too, and any that has not never will at this time.
"""

from __future__ import annotations

import asyncio
import itertools
import time

from tests.polling import wait_for
from wrennd.sandbox.reaper import Reaper


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, fail: str = "") -> None:
        self.clock = FakeClock()
        self.fired: list[str] = []
        self._fail = fail
        self._barriers = itertools.count()
        self.reaper = Reaper(self._expire, clock=self.clock)

    async def _expire(self, sid: str) -> None:
        self.fired.append(sid)
        if sid == self._fail:
            raise RuntimeError("pause failed")

    async def advance_to(self, t: float) -> list[str]:
        """Move the clock to ``t``, let the reaper act, and return what fired (no barriers)."""
        self.clock.now = t
        barrier = f"barrier-{next(self._barriers)}"
        self.reaper.set(barrier, t)
        await wait_for(lambda: barrier in self.fired, what=f"{barrier} fired")
        return [sid for sid in self.fired if not sid.startswith("barrier-")]


async def test_expires_in_deadline_order_and_once() -> None:
    h = Harness()
    h.reaper.start()
    t0 = h.clock.now
    h.reaper.set("b", t0 + 10)
    h.reaper.set("a", t0 + 5)
    h.reaper.set("c", t0 + 1000)
    assert await h.advance_to(t0 + 4.999) == []
    assert await h.advance_to(t0 + 5) == ["a"]
    assert await h.advance_to(t0 + 50) == ["a", "b"]
    assert await h.advance_to(t0 + 60) == ["a", "b"]  # once each
    await h.reaper.stop()
    assert h.reaper.deadline("c") == t0 + 1000 and h.reaper.deadline("a") is None


async def test_rearm_and_disarm() -> None:
    h = Harness()
    h.reaper.start()
    t0 = h.clock.now
    h.reaper.set("x", t0 + 5)
    h.reaper.set("x", t0 + 20)  # extended: the old deadline must not fire
    h.reaper.set("y", t0 + 5)
    h.reaper.set("y", None)  # disarmed
    assert await h.advance_to(t0 + 10) == []
    assert h.reaper.deadline("x") == t0 + 20
    assert await h.advance_to(t0 + 20) == ["x"]
    await h.reaper.stop()


async def test_failing_action_does_not_stop_the_reaper() -> None:
    h = Harness(fail="bad")
    h.reaper.start()
    t0 = h.clock.now
    h.reaper.set("bad", t0)
    h.reaper.set("good", t0 + 5)
    assert await h.advance_to(t0) == ["bad"]
    assert await h.advance_to(t0 + 5) == ["bad", "good"]
    await h.reaper.stop()


async def test_stop_waits_for_running_actions() -> None:
    started, release, done = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def on_expire(sid: str) -> None:
        started.set()
        await release.wait()
        done.set()

    clock = FakeClock()
    r = Reaper(on_expire, clock=clock)
    r.start()
    r.set("x", clock.now)
    await asyncio.wait_for(started.wait(), 10)
    stopping = asyncio.ensure_future(r.stop())
    # stop() must keep waiting while the action runs (a correct one never finishes here).
    finished, _ = await asyncio.wait({stopping}, timeout=0.05)
    assert not finished and not done.is_set()
    release.set()
    await asyncio.wait_for(stopping, 10)
    assert done.is_set()


async def test_the_real_clock_is_the_default() -> None:
    fired: list[str] = []

    async def on_expire(sid: str) -> None:
        fired.append(sid)

    r = Reaper(on_expire)
    r.start()
    now = time.time()
    r.set("later", now + 3600)
    r.set("soon", now + 0.05)
    await wait_for(lambda: fired == ["soon"], what="the deadline 50 ms ahead fired")
    await r.stop()
    assert time.time() >= now + 0.05
    assert r.deadline("later") == now + 3600


async def test_stop_right_after_a_wake_does_not_wait_for_the_next_deadline() -> None:
    """Issue 20 item 3: shutdown's pauses disarm deadlines (waking the loop) just before
    stop() cancels it; the cancel used to be lost in the completing wait and the reaper
    slept until its next deadline, an hour here."""

    async def on_expire(sid: str) -> None:
        pass

    clock = FakeClock()
    for before, between in itertools.product(range(4), range(4)):
        # The wake and the cancel land at every point of the loop's wait.
        r = Reaper(on_expire, clock=clock)
        r.start()
        r.set("later", clock.now + 3600)
        for _ in range(before):
            await asyncio.sleep(0)
        r.set("other", None)  # wakes the loop
        for _ in range(between):
            await asyncio.sleep(0)
        stopping = asyncio.ensure_future(r.stop())
        # asyncio.wait, not wait_for: a stop() that swallowed wait_for's cancel would
        # look like one that finished.
        done, _ = await asyncio.wait({stopping}, timeout=2)
        assert stopping in done, (before, between)


async def test_a_cancelled_stop_is_cancelled() -> None:
    """A caller cut off at its deadline must see its own cancel, not a clean return."""
    release = asyncio.Event()

    async def on_expire(sid: str) -> None:
        await release.wait()

    clock = FakeClock()
    r = Reaper(on_expire, clock=clock)
    r.start()
    r.set("x", clock.now)
    await wait_for(lambda: bool(r._running), what="the action started")
    stopping = asyncio.ensure_future(r.stop())
    await asyncio.sleep(0.01)
    stopping.cancel()
    await asyncio.wait({stopping}, timeout=2)
    assert stopping.cancelled()
    release.set()
