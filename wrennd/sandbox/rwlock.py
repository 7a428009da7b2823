"""A sandbox's lock: guest calls share it, lifecycle calls hold it alone.

Guest calls (exec, files, processes) may run side by side; pause, resume,
destroy and template creation need the sandbox to themselves, so that nothing
reaches a frozen or half-stopped guest.  A waiting lifecycle call stops new
guest calls from entering (a stream of execs cannot starve a pause), and one
whose ``preempt_after`` passes asks the guest calls still inside to leave:
each holder registered a callback (its deadline is moved to now) and ends with
a clear error instead of holding the pause up for as long as a command runs.

``async with lock:`` is the exclusive mode, so code written for an
``asyncio.Lock`` keeps its meaning.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from types import TracebackType

# Seconds a pause, destroy or template creation lets running guest calls finish
# before it asks them to leave.
PREEMPT_AFTER = 5.0


class Holder:
    """One shared holder; ``preempted`` says a lifecycle call asked it to leave."""

    def __init__(self) -> None:
        self.preempted = False
        self._on_preempt: Callable[[], None] | None = None

    def on_preempt(self, callback: Callable[[], None]) -> None:
        self._on_preempt = callback
        if self.preempted:
            callback()

    def preempt(self) -> None:
        if not self.preempted:
            self.preempted = True
            if self._on_preempt is not None:
                self._on_preempt()


class SandboxLock:
    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._holders: set[Holder] = set()
        self._writer = False
        self._writers_waiting = 0

    @property
    def readers(self) -> int:
        return len(self._holders)

    def locked(self) -> bool:
        """Held exclusively (or about to be: a lifecycle call is waiting)."""
        return self._writer or self._writers_waiting > 0

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[Holder]:
        holder = Holder()
        async with self._cond:
            await self._cond.wait_for(lambda: not self._writer and not self._writers_waiting)
            self._holders.add(holder)
        try:
            yield holder
        finally:
            self._holders.discard(holder)
            await self._notify()

    @contextlib.asynccontextmanager
    async def exclusive(self, preempt_after: float | None = None) -> AsyncIterator[None]:
        """Wait until no one holds the lock; after ``preempt_after`` seconds, ask the
        shared holders still inside to leave."""
        await self._acquire(preempt_after)
        try:
            yield
        finally:
            self._writer = False
            await self._notify()

    async def _acquire(self, preempt_after: float | None) -> None:
        async with self._cond:
            self._writers_waiting += 1
            try:
                await self._cond.wait_for(lambda: not self._writer)
                if preempt_after is not None:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(preempt_after):
                            await self._cond.wait_for(lambda: not self._holders)
                    for holder in list(self._holders):
                        holder.preempt()
                await self._cond.wait_for(lambda: not self._holders)
            except BaseException:
                self._writers_waiting -= 1
                self._cond.notify_all()
                raise
            self._writers_waiting -= 1
            self._writer = True

    async def _notify(self) -> None:
        # A cancelled task must still wake the others: shield the short re-lock.
        async def wake() -> None:
            async with self._cond:
                self._cond.notify_all()

        await asyncio.shield(wake())

    async def __aenter__(self) -> None:
        await self._acquire(None)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._writer = False
        await self._notify()
