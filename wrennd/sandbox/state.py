"""The sandbox state machine.

Every lifecycle operation moves a sandbox through an intermediate state
(creating, pausing, resuming, stopping) to a resting one (running, paused,
error), and every transition is persisted before it is acknowledged.  A call
that needs another state gets ``WrongState`` naming the state it found.
"""

from __future__ import annotations

import enum


class SandboxState(enum.StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    STOPPING = "stopping"
    ERROR = "error"

    @property
    def in_progress(self) -> bool:
        """An operation owns the sandbox; a crash here needs recovery at start-up."""
        return self in _IN_PROGRESS


_IN_PROGRESS = frozenset(
    {SandboxState.CREATING, SandboxState.PAUSING, SandboxState.RESUMING, SandboxState.STOPPING}
)

S = SandboxState
TRANSITIONS: dict[SandboxState, frozenset[SandboxState]] = {
    S.CREATING: frozenset({S.RUNNING, S.STOPPING, S.ERROR}),
    # running -> running is not a transition; set_timeout and exec change no state.
    S.RUNNING: frozenset({S.PAUSING, S.STOPPING, S.ERROR}),
    # A pause that fails after the guest froze thaws and resumes: back to running.
    S.PAUSING: frozenset({S.PAUSED, S.RUNNING, S.ERROR}),
    S.PAUSED: frozenset({S.RESUMING, S.STOPPING}),
    # A resume that fails before the guest ran keeps the snapshot: back to paused.
    S.RESUMING: frozenset({S.RUNNING, S.PAUSED, S.ERROR}),
    S.STOPPING: frozenset({S.ERROR}),  # success removes the record
    # From error: destroy, or recover from the last snapshot.
    S.ERROR: frozenset({S.STOPPING, S.RESUMING}),
}


class WrongState(Exception):
    """An operation was asked of a sandbox in a state that does not allow it."""

    def __init__(self, sandbox_id: str, state: SandboxState, operation: str) -> None:
        super().__init__(f"sandbox {sandbox_id} is {state.value}: cannot {operation}")
        self.sandbox_id = sandbox_id
        self.state = state
        self.operation = operation


def check_transition(
    sandbox_id: str, current: SandboxState, target: SandboxState, operation: str
) -> None:
    if target not in TRANSITIONS[current]:
        raise WrongState(sandbox_id, current, operation)
