"""Sandbox records: the state machine, and ``state_dir/sandboxes/<id>/state.json``.

Every lifecycle operation moves a sandbox through an intermediate state
(creating, pausing, resuming, stopping) to a resting one (running, paused,
error), and every transition is persisted before it is acknowledged.  A call
that needs another state gets ``WrongState`` naming the state it found.

The record is the daemon's memory across restarts: what the sandbox was made
from, its resources (network slot, VMM pid), its state and the last error.
Writes are atomic (wrennd.durable); a record that cannot be parsed is reported
with its path, never silently dropped or guessed at.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from wrennd.durable import atomic_write_json
from wrennd.sandbox.errors import WrongState


class SandboxState(enum.StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    STOPPING = "stopping"
    ERROR = "error"
    # Its record could not be read: shown with the reason, and only destroy is allowed.
    DAMAGED = "damaged"

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
    S.DAMAGED: frozenset({S.STOPPING}),
}


def check_transition(
    sandbox_id: str, current: SandboxState, target: SandboxState, operation: str
) -> None:
    if target not in TRANSITIONS[current]:
        raise WrongState(sandbox_id, current, operation)


RECORD_VERSION = 1
_ID_RE = re.compile(r"^sb-[0-9a-f]{12}$")


class RecordError(ValueError):
    """A state.json is missing, unreadable or malformed."""

    def __init__(self, message: str, sandbox_id: str | None = None) -> None:
        super().__init__(message)
        self.sandbox_id = sandbox_id


def new_sandbox_id() -> str:
    return f"sb-{secrets.token_hex(6)}"


def check_sandbox_id(sandbox_id: str) -> str:
    # Ids become path components: refuse anything else outright.
    if not _ID_RE.match(sandbox_id):
        raise ValueError(f"invalid sandbox id {sandbox_id!r}: expected sb- and 12 hex digits")
    return sandbox_id


@dataclasses.dataclass
class SandboxRecord:
    id: str
    state: SandboxState
    vcpus: int
    memory_mib: int
    image: str | None = None
    # "4k" or "2m" (sandbox/hugepages.py): fixed at create, kept by every snapshot.
    memory_backing: str = "4k"
    template: str | None = None
    timeout_s: float | None = None
    expires_at: float | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    # Written ahead: the slot before its network is made, the API socket before the VMM
    # is spawned, its pid and start time (clock ticks, /proc/PID/stat) as soon as it is.
    slot: int | None = None
    vmm_api_socket: str | None = None
    vmm_pid: int | None = None
    vmm_start_time: int | None = None
    # The VMM's memory is served by this daemon's UFFD engine (a resume or a clone): it
    # cannot run on without it, so a restarted daemon cannot adopt it.
    uffd_served: bool = False
    generation: int | None = None  # memory generation of the last pause; None: never paused
    # A snapshot was taken but not ingested: the VMM's dirty bitmap no longer
    # covers those pages, so the next snapshot must be Full.
    need_full: bool = False
    # Build id of the memory header the record knows (the last pause's, or its collapse):
    # a header with another one after a crash mid-pause means that pause's memory committed.
    snapshot_build_id: str | None = None
    error: str | None = None
    # Set when the sandbox went back to its last snapshot (memory and disk together):
    # {"generation", "at", "reason"}; cleared by the next pause.
    recovered_from: dict[str, Any] | None = None
    created_at: float = dataclasses.field(default_factory=time.time)
    updated_at: float = dataclasses.field(default_factory=time.time)

    @classmethod
    def damaged(cls, sandbox_id: str, reason: str) -> SandboxRecord:
        """What is known of a sandbox whose record cannot be read: its id and why."""
        return cls(id=sandbox_id, state=SandboxState.DAMAGED, vcpus=0, memory_mib=0, error=reason)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["state"] = self.state.value
        d["version"] = RECORD_VERSION
        return d

    @classmethod
    def from_json(cls, d: object, where: str) -> SandboxRecord:
        if not isinstance(d, dict):
            raise RecordError(f"{where}: expected a JSON object")
        if d.get("version") != RECORD_VERSION:
            raise RecordError(f"{where}: unsupported record version {d.get('version')!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known - {"version"}
        if unknown:
            raise RecordError(f"{where}: unknown fields {sorted(unknown)}")
        try:
            fields = {k: v for k, v in d.items() if k != "version"}
            fields["state"] = SandboxState(fields["state"])
            rec = cls(**fields)
            check_sandbox_id(rec.id)
        except (KeyError, TypeError, ValueError) as e:
            raise RecordError(f"{where}: {e}") from e
        return rec


class RecordStore:
    """Reads and writes the records under ``sandboxes_dir``."""

    def __init__(self, sandboxes_dir: Path) -> None:
        self.root = sandboxes_dir

    def dir(self, sandbox_id: str) -> Path:
        return self.root / check_sandbox_id(sandbox_id)

    def save(self, record: SandboxRecord) -> None:
        record.updated_at = time.time()
        d = self.dir(record.id)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / "state.json", record.to_json())

    def load(self, sandbox_id: str) -> SandboxRecord:
        path = self.dir(sandbox_id) / "state.json"
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError) as e:
            raise RecordError(f"{path}: {e}") from e
        rec = SandboxRecord.from_json(doc, str(path))
        if rec.id != sandbox_id:
            raise RecordError(f"{path}: record names sandbox {rec.id}")
        return rec

    def load_all(self) -> tuple[list[SandboxRecord], list[RecordError]]:
        """Every record, plus an error for each directory whose record is bad."""
        records: list[SandboxRecord] = []
        errors: list[RecordError] = []
        if not self.root.exists():
            return records, errors
        for entry in sorted(self.root.iterdir()):
            if not entry.is_dir() or not _ID_RE.match(entry.name):
                continue
            try:
                records.append(self.load(entry.name))
            except RecordError as e:
                e.sandbox_id = entry.name
                errors.append(e)
        return records, errors

    def remove(self, sandbox_id: str) -> None:
        """Delete the sandbox's directory (record and everything beside it)."""
        shutil.rmtree(self.dir(sandbox_id), ignore_errors=False)
