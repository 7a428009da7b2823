"""The sandboxes this daemon knows: their records, locks and live resources, by id.

The registry is the one place a sandbox is looked up; it persists a record on
every state change (``move`` checks the transition, ``settle`` records where an
operation came to rest).  It does no lifecycle work itself.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from wrennd.sandbox.errors import SandboxNotFound, WrongState
from wrennd.sandbox.live import Live
from wrennd.sandbox.record import RecordStore, SandboxRecord, SandboxState, check_transition
from wrennd.sandbox.rwlock import SandboxLock
from wrennd.sandbox.timing import TimingRecord


@dataclass
class Sandbox:
    """One sandbox: its persisted record, its lock (guest calls share it, lifecycle calls
    hold it alone), what runs."""

    record: SandboxRecord
    lock: SandboxLock = field(default_factory=SandboxLock)
    live: Live | None = None
    collapse: asyncio.Task[None] | None = None
    # The stage timings of the last run of each operation (create, pause, resume, ...).
    timings: dict[str, TimingRecord] = field(default_factory=dict)
    # The last pause's work after its answer (sandbox/afterpause.py).
    settling: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.record.id

    async def settled(self) -> None:
        """Wait for the last pause's background work: nothing may overtake it."""
        if self.settling is not None:
            await asyncio.shield(self.settling)
            self.settling = None


class Registry:
    def __init__(self, records: RecordStore) -> None:
        self.records = records
        self._by_id: dict[str, Sandbox] = {}

    def __iter__(self) -> Iterator[Sandbox]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, sandbox_id: str) -> Sandbox:
        sb = self._by_id.get(sandbox_id)
        if sb is None:
            raise SandboxNotFound(sandbox_id)
        return sb

    def find(self, sandbox_id: str) -> Sandbox | None:
        return self._by_id.get(sandbox_id)

    def running(self, sandbox_id: str, operation: str) -> tuple[Sandbox, Live]:
        """A running sandbox and its live resources; WrongState otherwise."""
        sb = self.get(sandbox_id)
        if sb.record.state != SandboxState.RUNNING or sb.live is None:
            raise WrongState(sandbox_id, sb.record.state, operation)
        return sb, sb.live

    def still(self, sb: Sandbox) -> None:
        """SandboxNotFound if ``sb`` left the registry while its caller waited for the lock
        (a create that failed, a destroy that finished)."""
        if self._by_id.get(sb.id) is not sb:
            raise SandboxNotFound(sb.id)

    def add(self, sb: Sandbox) -> None:
        self._by_id[sb.id] = sb

    def discard(self, sandbox_id: str) -> None:
        self._by_id.pop(sandbox_id, None)

    # --- persistence -----------------------------------------------------------
    async def save(self, sb: Sandbox) -> None:
        await asyncio.to_thread(self.records.save, sb.record)

    async def move(self, sb: Sandbox, target: SandboxState, operation: str) -> None:
        """Enter ``target`` if the state machine allows it from here, persisted."""
        check_transition(sb.id, sb.record.state, target, operation)
        sb.record.state = target
        await self.save(sb)

    async def settle(self, sb: Sandbox, target: SandboxState, error: str | None) -> None:
        """Persist the resting state an operation reached (its outcome decides, no check),
        with the resources the sandbox now holds."""
        rec, live = sb.record, sb.live
        rec.state, rec.error = target, error
        rec.slot = live.slot if live is not None else None
        if live is None or live.vmm is None:
            rec.vmm_api_socket = rec.vmm_pid = rec.vmm_start_time = None
            rec.uffd_served = False
        await self.save(sb)

    # --- queries ---------------------------------------------------------------
    def counts_by_state(self) -> dict[str, int]:
        counts = Counter(sb.record.state.value for sb in self._by_id.values())
        return {s.value: counts.get(s.value, 0) for s in SandboxState}

    def users_of_image(self, name: str) -> list[str]:
        """Sandboxes booted from image ``name`` (clones use their template's copy)."""
        return sorted(
            sb.id
            for sb in self._by_id.values()
            if sb.record.image == name and sb.record.template is None
        )

    def users_of_template(self, name: str) -> list[str]:
        return sorted(sb.id for sb in self._by_id.values() if sb.record.template == name)
