"""One call to a running sandbox's guest agent: its lock, its deadline, its way out.

A guest call holds the sandbox's lock shared (a pause, destroy or template
creation waits for it, or after a grace asks it to leave) and runs under a
deadline: the caller's, else the host's ``guest_timeout``.  While it runs, the
VMM process is watched: a stopped VMM (SIGSTOP, a debugger) cannot answer, so
the call ends at once instead of at its deadline.  Every way out is the same
``GuestUnavailable`` error with a ``reason``: ``deadline``, ``vmm_stopped``,
``preempted`` (a lifecycle call ended it) or ``unreachable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable

from wrennd.guest.client import GuestClient
from wrennd.sandbox.errors import GuestUnavailable, lifting
from wrennd.sandbox.registry import Registry
from wrennd.vm.identity import process_state

VMM_POLL_INTERVAL = 0.1


async def _watch_vmm(pid: int, on_stopped: Callable[[], None]) -> None:
    while True:
        state = await asyncio.to_thread(process_state, pid)
        if state is None or state in "Tt":
            on_stopped()
            return
        await asyncio.sleep(VMM_POLL_INTERVAL)


@contextlib.asynccontextmanager
async def guest_call(
    registry: Registry, sandbox_id: str, within: float
) -> AsyncIterator[GuestClient]:
    """The guest of a running sandbox for the length of the block, within ``within``
    seconds (waiting for a lifecycle call to finish counts)."""
    loop = asyncio.get_running_loop()
    deadline = None if math.isinf(within) else loop.time() + within
    sb = registry.get(sandbox_id)
    reason = "deadline"
    watcher: asyncio.Task[None] | None = None
    window = asyncio.timeout_at(deadline)
    try:
        async with window, sb.lock.shared() as holder:
            # Checked once the lock is ours: a pause that ran meanwhile has settled.
            with lifting():
                _, live = registry.running(sandbox_id, "reach the guest")
            guest = live.require_guest()

            def leave(why: str) -> None:
                nonlocal reason
                reason = why
                window.reschedule(loop.time())

            holder.on_preempt(lambda: leave("preempted"))
            if live.vmm is not None:
                pid = live.vmm.proc.pid
                watcher = asyncio.ensure_future(_watch_vmm(pid, lambda: leave("vmm_stopped")))
            with lifting():
                yield guest
    except TimeoutError as e:
        if not window.expired():
            raise
        raise _unavailable(sandbox_id, reason, within) from e
    finally:
        if watcher is not None:
            watcher.cancel()


_WHY = {
    "deadline": "did not answer within {timeout:g} s",
    "vmm_stopped": "cannot answer: its VMM process is stopped or gone",
    "preempted": "call was ended by a lifecycle operation (pause, destroy)",
}


def _unavailable(sandbox_id: str, reason: str, timeout: float) -> GuestUnavailable:
    why = _WHY[reason].format(timeout=timeout)
    return GuestUnavailable(
        f"the guest of sandbox {sandbox_id} {why}", id=sandbox_id, reason=reason, timeout=timeout
    )
