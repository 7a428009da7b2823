"""What a finished call reports to whoever watches the daemon (metrics), from any transport.

dispatch.answer times every call and, for lifecycle work, the stages its
``progress`` notifications name: a stage lasts from its first report to the
next stage's first report (the last one to the end of the call).  Observers
are plain callables run on the loop; they must be cheap and never raise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from wrennd.rpc.methods import CallContext, PeerCred
from wrennd.rpc.protocol import RequestId


@dataclass(frozen=True, slots=True)
class CallRecord:
    method: str
    lifecycle: bool
    seconds: float
    error_code: int | None  # None: the call answered with a result
    stages: tuple[tuple[str, float], ...] = ()  # (stage, seconds) in the order they ran


class Observer(Protocol):
    def __call__(self, record: CallRecord) -> None: ...


@dataclass
class StageClock:
    """Turns a call's progress reports into stage durations."""

    started: float = field(default_factory=time.monotonic)
    stages: list[tuple[str, float]] = field(default_factory=list)
    _current: str | None = None
    _since: float = 0.0

    def report(self, stage: object) -> None:
        if not isinstance(stage, str) or stage == self._current:
            return
        now = time.monotonic()
        self._close(now)
        # "done" is the end of the work, not a stage of it.
        self._current, self._since = (None if stage == "done" else stage), now

    def finish(self) -> tuple[float, tuple[tuple[str, float], ...]]:
        now = time.monotonic()
        self._close(now)
        self._current = None
        return now - self.started, tuple(self.stages)

    def _close(self, now: float) -> None:
        if self._current is not None:
            self.stages.append((self._current, now - self._since))
            self._current = None


class TimedContext:
    """A CallContext that passes everything through and notes the stages reported."""

    __slots__ = ("_inner", "clock")

    def __init__(self, inner: CallContext, clock: StageClock) -> None:
        self._inner = inner
        self.clock = clock

    @property
    def method(self) -> str:
        return self._inner.method

    @property
    def request_id(self) -> RequestId:
        return self._inner.request_id

    @property
    def is_notification(self) -> bool:
        return self._inner.is_notification

    @property
    def peer(self) -> PeerCred:
        return self._inner.peer

    @property
    def connected(self) -> bool:
        return self._inner.connected

    async def notify(self, method: str, params: dict[str, Any]) -> bool:
        if method == "progress":
            self.clock.report(params.get("stage"))
        return await self._inner.notify(method, params)

    async def progress(self, **fields: Any) -> bool:
        self.clock.report(fields.get("stage"))
        return await self._inner.progress(**fields)
