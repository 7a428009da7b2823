"""The background scrub: find rot in paused sandboxes' and templates' memory
before a resume needs it (settings ``scrub_interval``, ``scrub_rate_bytes``).

One pass checks every paused sandbox's snapshot and every template's against
the generation checksums (wrennd.snapshot.scrub), one snapshot at a time, on
a single worker thread of its own at the lowest CPU priority and at a bounded
read rate: off the event loop and out of the way of resumes.  What it found
is in ``stats()`` (host.stats section "scrub", and wrennd.web.metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wrennd.log import kv
from wrennd.sandbox import templates
from wrennd.sandbox.environment import Deps
from wrennd.sandbox.record import SandboxState
from wrennd.sandbox.registry import Registry
from wrennd.snapshot import SnapshotError
from wrennd.snapshot.scrub import ScrubReport, scrub

log = logging.getLogger(__name__)
FIRST_PASS_DELAY = 300.0  # after start-up, so a restart does not postpone scrubs for good


@dataclass(frozen=True)
class Target:
    kind: str  # "sandbox" or "template"
    name: str
    snapshot_dir: Path


def _lowest_priority() -> None:
    # Linux niceness is per thread: this lowers the scrub worker only.
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class Scrubber:
    def __init__(self, deps: Deps, registry: Registry) -> None:
        self.deps = deps
        self.registry = registry
        self.interval = deps.cfg.scrub_interval
        self.rate_bytes = deps.cfg.scrub_rate_bytes
        self._stop = threading.Event()  # seen by the worker between pieces
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._passes = 0
        self._bytes = 0
        self._last: dict[str, Any] = {}
        self._corrupt: list[dict[str, Any]] = []

    def start(self) -> None:
        """Scrub every `scrub_interval` seconds (0: never)."""
        if self.interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="scrub")

    async def stop(self) -> None:
        """End the loop; a pass under way stops after the piece it is reading."""
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    async def _run(self) -> None:
        delay = min(self.interval, FIRST_PASS_DELAY)
        while not await self._sleep(delay):
            try:
                await self.run_pass()
            except Exception as e:  # a pass must never end the loop
                log.error("scrub pass failed", extra=kv(error=e))
            delay = self.interval

    async def _sleep(self, seconds: float) -> bool:
        """True when asked to stop meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        return self._stop.is_set()

    def targets(self) -> list[Target]:
        out = [
            Target("sandbox", sb.id, self.deps.paths(sb.id).snapshot_dir)
            for sb in self.registry
            if sb.record.state == SandboxState.PAUSED
        ]
        for meta in templates.list_all(self.deps):
            tdir = templates.template_dir(self.deps, meta.name)
            out.append(Target("template", meta.name, templates.snapshot_of(tdir)))
        return out

    async def run_pass(self) -> list[dict[str, Any]]:
        """Scrub every target once; returns (and keeps for stats) what is corrupt."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, "wr-scrub", initializer=_lowest_priority)
        loop = asyncio.get_running_loop()
        started, wall = time.monotonic(), time.time()
        corrupt: list[dict[str, Any]] = []
        checked = unchecked = 0
        for t in self.targets():
            if self._stop.is_set():
                return self._corrupt
            try:
                report = await loop.run_in_executor(self._pool, self._scrub_one, t)
            except (SnapshotError, OSError) as e:
                # gone meanwhile (resumed, destroyed) is not damage; a damaged header is
                if t.snapshot_dir.exists() and self._still_target(t):
                    corrupt.append({"kind": t.kind, "name": t.name, "error": str(e)})
                continue
            checked += 1
            unchecked += len(report.unchecked)
            self._bytes += report.bytes_checked
            if report.corrupt is not None:
                corrupt.append(self._describe(t, report))
        self._passes += 1
        self._corrupt = corrupt
        self._last = {
            "started_at": wall,
            "seconds": round(time.monotonic() - started, 3),
            "snapshots": checked,
            "unchecked_generations": unchecked,
        }
        log.info("scrub pass done", extra=kv(corrupt=len(corrupt), **self._last))
        return corrupt

    def _scrub_one(self, t: Target) -> ScrubReport:
        return scrub(
            t.snapshot_dir, self.deps.cfg.store, self.rate_bytes, self._stop.is_set, self._stop.wait
        )

    def _still_target(self, t: Target) -> bool:
        return t in self.targets()

    @staticmethod
    def _describe(t: Target, report: ScrubReport) -> dict[str, Any]:
        e = report.corrupt
        assert e is not None
        log.error(
            "scrub: snapshot data does not match its checksums",
            extra=kv(kind=t.kind, name=t.name, error=e),
        )
        path = Path(str(e.path))
        return {
            "kind": t.kind,
            "name": t.name,
            "file": str(path),
            "generation": path.name,
            "block": e.block,
            "error": str(e),
        }

    def stats(self) -> dict[str, Any]:
        """host.stats "scrub": passes, bytes checked, the last pass, what is corrupt."""
        return {
            "enabled": self.interval > 0,
            "interval_s": self.interval,
            "rate_bytes": self.rate_bytes,
            "passes": self._passes,
            "bytes_checked": self._bytes,
            "last_pass": dict(self._last),
            "corrupt": list(self._corrupt),
        }
