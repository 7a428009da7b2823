"""Stage timings of one lifecycle operation: which stage took how long, and whose work it was.

An operation (create, clone, pause, resume, destroy, template creation) runs
its steps inside ``async with timings.stage(name, owner)``.  The owner says
who the time belongs to: ``daemon`` (work this process does itself: Python on
the loop, its threads, the UFFD engine's setup), ``vmm`` (the VMM process:
start, snapshot load and write, VM resume, exit) or ``guest`` (the agent in
the VM).  Each stage's start reports a ``progress`` notification that carries
the elapsed ms of every stage finished since the previous report.

Stages may run concurrently (network, storage and engine preparation of a
resume do not wait for one another), so their own durations (``wall_ms``)
can add up to more than the operation took.  ``ms`` counts the critical path
instead: every instant of the operation is charged to exactly one stage,
the open stage that ends last (the one the operation is still waiting for
when the others are done); a stage entirely hidden behind another is charged
0.  Instants when no stage is open are the daemon's own glue between stages
(saving records, choosing the next step) and go to the stage ``other``
(owner daemon).  So the ``ms`` of the stages add up to ``total_ms`` exactly
(up to rounding).  Stages are not nested: a step is either one stage or a
sequence of them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from wrennd.log import kv
from wrennd.sandbox.environment import Progress, no_progress

log = logging.getLogger(__name__)

Owner = Literal["daemon", "vmm", "guest"]
OWNERS: tuple[Owner, ...] = ("daemon", "vmm", "guest")
OTHER = "other"


@dataclass(frozen=True)
class Span:
    name: str
    owner: Owner
    start: float
    end: float


@dataclass(frozen=True)
class StageTime:
    name: str
    owner: Owner
    ms: float  # charged to this stage on the critical path
    wall_ms: float  # its own duration, overlaps included
    start_ms: float  # from the start of the operation


@dataclass(frozen=True)
class TimingRecord:
    """The finished bookkeeping of one operation (what the API returns)."""

    operation: str
    total_ms: float
    stages: tuple[StageTime, ...]
    facts: dict[str, str] = field(default_factory=dict)

    def by_owner(self) -> dict[str, float]:
        shares: dict[str, float] = dict.fromkeys(OWNERS, 0.0)
        for s in self.stages:
            shares[s.owner] += s.ms
        return shares

    def to_json(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "total_ms": round(self.total_ms, 3),
            "owners": {k: round(v, 3) for k, v in self.by_owner().items()},
            "stages": [
                {
                    "name": s.name,
                    "owner": s.owner,
                    "ms": round(s.ms, 3),
                    "wall_ms": round(s.wall_ms, 3),
                    "start_ms": round(s.start_ms, 3),
                }
                for s in self.stages
            ],
            **self.facts,
        }


def critical_path(spans: list[Span], start: float, end: float) -> dict[int, float]:
    """Seconds charged to each span (by index); key -1 is the time no span covered."""
    cuts = sorted({start, end, *(min(max(s.start, start), end) for s in spans),
                   *(min(max(s.end, start), end) for s in spans)})  # fmt: skip
    charged: dict[int, float] = {}
    for a, b in itertools.pairwise(cuts):
        open_ = [i for i, s in enumerate(spans) if s.start <= a and s.end >= b]
        # The one that ends last; among equals the latest started (the innermost step).
        who = max(open_, key=lambda i: (spans[i].end, spans[i].start, i), default=-1)
        charged[who] = charged.get(who, 0.0) + (b - a)
    return charged


class Timings:
    """The stages of one running operation; ``finish()`` makes its ``TimingRecord``."""

    def __init__(
        self,
        operation: str,
        progress: Progress = no_progress,
        *,
        steps: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.operation = operation
        self.progress = progress
        self.steps = steps  # the stages a progress report counts towards (``total``)
        self.clock = clock
        self.started = clock()
        self.spans: list[Span] = []
        self.facts: dict[str, str] = {}
        self._unreported: list[Span] = []
        self._begun = 0

    async def report(self, name: str, **facts: int) -> None:
        """A progress report for ``name``, with the stages finished since the last one."""
        done = {f"{s.name}_ms": round((s.end - s.start) * 1e3) for s in self._unreported}
        self._unreported.clear()
        await self.progress(name, self._begun, max(self.steps, self._begun), **done, **facts)

    async def begin(self, name: str, owner: Owner, **facts: int) -> Callable[[], None]:
        """Start a stage by hand (one that ends in a callback); call what it returns
        to end it (once)."""
        await self.report(name, **facts)
        self._begun += 1
        began = self.clock()
        ended = False

        def end() -> None:
            nonlocal ended
            if not ended:
                ended = True
                span = Span(name, owner, began, self.clock())
                self.spans.append(span)
                self._unreported.append(span)

        return end

    @contextlib.asynccontextmanager
    async def stage(self, name: str, owner: Owner, **facts: int) -> AsyncIterator[None]:
        end = await self.begin(name, owner, **facts)
        try:
            yield
        finally:
            end()

    def finish(self) -> TimingRecord:
        end = self.clock()
        charged = critical_path(self.spans, self.started, end)
        order = sorted(range(len(self.spans)), key=lambda i: (self.spans[i].start, i))
        stages = [self._stage_time(i, charged.get(i, 0.0)) for i in order]
        stages.append(StageTime(OTHER, "daemon", charged.get(-1, 0.0) * 1e3, 0.0, 0.0))
        return TimingRecord(self.operation, (end - self.started) * 1e3, tuple(stages), self.facts)

    def _stage_time(self, i: int, charged: float) -> StageTime:
        s = self.spans[i]
        start_ms = (s.start - self.started) * 1e3
        return StageTime(s.name, s.owner, charged * 1e3, (s.end - s.start) * 1e3, start_ms)

    async def done(self, sandbox_id: str, **facts: int) -> TimingRecord:
        """The closing ``done`` report, the record, and its log line."""
        await self.report("done", **facts)
        record = self.finish()
        log_record(record, sandbox_id)
        return record

    def failed(self, sandbox_id: str) -> TimingRecord:
        """The record of an operation that failed, logged as such."""
        record = self.finish()
        log_record(record, sandbox_id, ok=False)
        return record


def log_record(record: TimingRecord, sandbox_id: str, ok: bool = True) -> None:
    """One logfmt line: the total, the owners' shares and every stage's ms."""
    fields: dict[str, Any] = {"operation": record.operation, "sandbox": sandbox_id, "ok": ok}
    fields["total_ms"] = f"{record.total_ms:.2f}"
    fields.update({f"{k}_ms": f"{v:.2f}" for k, v in record.by_owner().items()})
    fields.update({f"stage_{s.name}_ms": f"{s.ms:.2f}" for s in record.stages})
    fields.update(record.facts)
    log.info("timings", extra=kv(**fields))
