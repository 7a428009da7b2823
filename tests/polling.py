"""Wait for a condition instead of sleeping a fixed time and hoping it is true by then.

A fixed sleep is either too long (slow suite) or, on a loaded machine, too short
(a flake).  These poll the condition and fail with a message naming it when it
does not come true within ``timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

Describe = str | Callable[[], str] | None


def _failure(what: Describe, predicate: Callable[[], object], timeout: float) -> AssertionError:
    # A callable ``what`` is asked at the deadline: it can say what is in the way.
    name = what() if callable(what) else what
    name = name or getattr(predicate, "__name__", repr(predicate))
    return AssertionError(f"not true within {timeout} s: {name}")


async def wait_for(
    predicate: Callable[[], object],
    timeout: float = 10.0,  # noqa: ASYNC109 -- a polling deadline, not a cancel scope
    interval: float = 0.01,
    what: Describe = None,
) -> None:
    """Poll ``predicate`` on the event loop until it is truthy; AssertionError at ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise _failure(what, predicate, timeout)
        await asyncio.sleep(interval)


def wait_for_blocking(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    interval: float = 0.01,
    what: Describe = None,
) -> None:
    """``wait_for`` for code outside an event loop (blocks the calling thread)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise _failure(what, predicate, timeout)
        time.sleep(interval)
