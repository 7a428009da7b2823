"""Per-sandbox timeouts: when a sandbox's deadline passes, act on it once.

The reaper keeps one deadline per sandbox id and one asyncio task that sleeps
until the earliest.  The action (pause or destroy, from config ``ttl_action``)
is the manager's; the reaper only decides when.  Deadlines are wall-clock
(``time.time()``) because they are persisted in records and must survive a
daemon restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Awaitable, Callable

from wrennd.log import kv

log = logging.getLogger(__name__)

ExpireAction = Callable[[str], Awaitable[None]]


class Reaper:
    def __init__(self, on_expire: ExpireAction, clock: Callable[[], float] = time.time) -> None:
        self._on_expire = on_expire
        self._clock = clock
        self._deadlines: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._running: set[asyncio.Task[None]] = set()

    def set(self, sandbox_id: str, deadline: float | None) -> None:
        """Arm (or with None, disarm) the sandbox's deadline."""
        if deadline is None:
            self._deadlines.pop(sandbox_id, None)
        else:
            self._deadlines[sandbox_id] = deadline
            heapq.heappush(self._heap, (deadline, sandbox_id))
        self._wake.set()

    def deadline(self, sandbox_id: str) -> float | None:
        return self._deadlines.get(sandbox_id)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="reaper")

    async def stop(self) -> None:
        """Stop scheduling; actions already started run to completion.

        The loop also sees ``_stopped``: a cancel can be lost when it lands just as
        the loop's wait completes.  Waiting with ``asyncio.wait`` (not a suppressed
        ``await``) lets a cancel of the caller itself through.
        """
        self._stopped = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    def _pop_due(self, now: float) -> list[str]:
        due = []
        while self._heap and self._heap[0][0] <= now:
            deadline, sid = heapq.heappop(self._heap)
            # Heap entries outlive re-arming; only the current deadline counts.
            if self._deadlines.get(sid) == deadline:
                del self._deadlines[sid]
                due.append(sid)
        return due

    async def _run(self) -> None:
        while not self._stopped:
            self._wake.clear()
            for sid in self._pop_due(self._clock()):
                task = asyncio.get_running_loop().create_task(self._expire(sid))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            delay = self._heap[0][0] - self._clock() if self._heap else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _expire(self, sandbox_id: str) -> None:
        log.info("sandbox timeout reached", extra=kv(sandbox=sandbox_id))
        try:
            await self._on_expire(sandbox_id)
        except Exception:
            log.exception("timeout action failed", extra=kv(sandbox=sandbox_id))
