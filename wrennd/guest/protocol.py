"""Message types shared by the guest agent and its host-side client.

This module runs inside the guest as well as on the host, so it imports only
the standard library (the guest has Debian's python3 and nothing of wrennd but
the agent files).  Every type converts to and from plain JSON objects; parsing
validates types and raises ``ProtocolError`` naming the offending field, which
the agent answers with a 400.

Binary payloads (process output, stdin) travel base64-encoded inside JSON;
file contents travel as raw HTTP bodies.
"""

from __future__ import annotations

import base64
import binascii
import json
import signal as _signal
from dataclasses import dataclass, field
from typing import Any

AGENT_PORT = 49983
API_VERSION = 1

# Error codes carried in ``{"error": {"code": ..., "message": ...}}`` bodies.
ENOENT = "ENOENT"
EACCES = "EACCES"
ENOTDIR = "ENOTDIR"
EISDIR = "EISDIR"
EEXIST = "EEXIST"
ENOTEMPTY = "ENOTEMPTY"
EINVAL = "EINVAL"
EIO = "EIO"
NO_PROCESS = "ENOPROCESS"
NO_USER = "ENOUSER"
BAD_REQUEST = "EBADREQUEST"
CONFLICT = "ECONFLICT"
NO_ROUTE = "ENOROUTE"

# HTTP status of each error code.
ERROR_STATUS = {
    ENOENT: 404,
    NO_PROCESS: 404,
    NO_ROUTE: 404,
    EACCES: 403,
    ENOTDIR: 400,
    EISDIR: 400,
    EEXIST: 409,
    ENOTEMPTY: 409,
    CONFLICT: 409,
    EINVAL: 400,
    NO_USER: 400,
    BAD_REQUEST: 400,
    EIO: 500,
}

JSON = dict[str, Any]


class ProtocolError(ValueError):
    """A message does not have the expected shape; says which field and why."""


def _get(obj: JSON, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    value = obj.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ProtocolError(f"field {key!r}: expected a number, got a boolean")
    if not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else "number"
        raise ProtocolError(f"field {key!r}: expected {name}, got {type(value).__name__}")
    return value


def _str_list(obj: JSON, key: str) -> list[str] | None:
    value = _get(obj, key, list)
    if value is None:
        return None
    if not value or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"field {key!r}: expected a non-empty list of strings")
    return list(value)


def _str_map(obj: JSON, key: str) -> dict[str, str]:
    value = _get(obj, key, dict, {})
    for k, v in value.items():
        if not isinstance(v, str) or not k or "=" in k:
            raise ProtocolError(f"field {key!r}: expected NAME (no '=') -> string, got {k!r}")
    return dict(value)


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, key: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ProtocolError(f"field {key!r}: not valid base64: {exc}") from None


def _b64_field(obj: JSON, key: str) -> bytes | None:
    text = _get(obj, key, str)
    return None if text is None else b64decode(text, key)


def parse_object(raw: bytes | str) -> JSON:
    """Parse one JSON text that must be an object."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"bad JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _nonneg(obj: JSON, key: str) -> float | None:
    value = _get(obj, key, (int, float))
    if value is not None and value < 0:
        raise ProtocolError(f"field {key!r}: must not be negative")
    return None if value is None else float(value)


@dataclass(frozen=True)
class CommandSpec:
    """What to run: ``argv`` (no shell) or ``shell`` (run by /bin/sh -c), and how."""

    argv: list[str] | None = None
    shell: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    user: str | None = None
    stdin: bytes | None = None
    timeout: float | None = None

    def to_json(self) -> JSON:
        out: JSON = {"env": self.env}
        if self.argv is not None:
            out["argv"] = self.argv
        if self.shell is not None:
            out["shell"] = self.shell
        for key in ("cwd", "user", "timeout"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.stdin is not None:
            out["stdin"] = b64encode(self.stdin)
        return out

    @classmethod
    def from_json(cls, obj: JSON) -> CommandSpec:
        argv = _str_list(obj, "argv")
        shell = _get(obj, "shell", str)
        if (argv is None) == (shell is None):
            raise ProtocolError("exactly one of 'argv' and 'shell' is required")
        timeout = _nonneg(obj, "timeout")
        return cls(
            argv=argv,
            shell=shell,
            env=_str_map(obj, "env"),
            cwd=_get(obj, "cwd", str),
            user=_get(obj, "user", str),
            stdin=_b64_field(obj, "stdin"),
            timeout=timeout,
        )

    def command(self) -> list[str]:
        return list(self.argv) if self.argv is not None else ["/bin/sh", "-c", str(self.shell)]


# Stream events of an exec or an attached background process, one JSON per line.


@dataclass(frozen=True)
class Started:
    pid: int
    id: str | None = None


@dataclass(frozen=True)
class Output:
    stream: str  # "stdout" or "stderr"
    data: bytes
    seq: int = 0


@dataclass(frozen=True)
class Lost:
    """Output older than the background buffer keeps was dropped before this attach."""

    chunks: int


@dataclass(frozen=True)
class Exited:
    code: int | None
    signal: int | None
    timed_out: bool = False


Event = Started | Output | Lost | Exited


def event_to_json(event: Event) -> JSON:
    if isinstance(event, Output):
        return {"type": event.stream, "data": b64encode(event.data), "seq": event.seq}
    if isinstance(event, Started):
        return {"type": "start", "pid": event.pid, "id": event.id}
    if isinstance(event, Lost):
        return {"type": "lost", "chunks": event.chunks}
    return {
        "type": "exit",
        "code": event.code,
        "signal": event.signal,
        "timed_out": event.timed_out,
    }


def event_line(event: Event) -> bytes:
    return json.dumps(event_to_json(event), separators=(",", ":")).encode() + b"\n"


def event_from_json(obj: JSON) -> Event:
    kind = _get(obj, "type", str)
    if kind in ("stdout", "stderr"):
        return Output(kind, b64decode(_get(obj, "data", str, ""), "data"), _get(obj, "seq", int, 0))
    if kind == "start":
        return Started(_get(obj, "pid", int, 0), _get(obj, "id", str))
    if kind == "lost":
        return Lost(_get(obj, "chunks", int, 0))
    if kind == "exit":
        return Exited(
            _get(obj, "code", int), _get(obj, "signal", int), bool(obj.get("timed_out", False))
        )
    raise ProtocolError(f"unknown event type {kind!r}")


@dataclass(frozen=True)
class ProcessInfo:
    id: str
    pid: int
    command: list[str]
    running: bool
    code: int | None = None
    signal: int | None = None
    started_at: float = 0.0

    def to_json(self) -> JSON:
        return {
            "id": self.id,
            "pid": self.pid,
            "command": self.command,
            "running": self.running,
            "code": self.code,
            "signal": self.signal,
            "started_at": self.started_at,
        }

    @classmethod
    def from_json(cls, obj: JSON) -> ProcessInfo:
        return cls(
            id=_get(obj, "id", str, ""),
            pid=_get(obj, "pid", int, 0),
            command=_str_list(obj, "command") or [],
            running=bool(obj.get("running")),
            code=_get(obj, "code", int),
            signal=_get(obj, "signal", int),
            started_at=float(_get(obj, "started_at", (int, float), 0.0)),
        )


@dataclass(frozen=True)
class FileInfo:
    name: str
    path: str
    type: str  # "file", "dir", "symlink", "other"
    size: int
    mode: int
    uid: int
    gid: int
    mtime: float
    target: str | None = None  # symlink target

    def to_json(self) -> JSON:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, obj: JSON) -> FileInfo:
        return cls(
            name=_get(obj, "name", str, ""),
            path=_get(obj, "path", str, ""),
            type=_get(obj, "type", str, "other"),
            size=_get(obj, "size", int, 0),
            mode=_get(obj, "mode", int, 0),
            uid=_get(obj, "uid", int, 0),
            gid=_get(obj, "gid", int, 0),
            mtime=float(_get(obj, "mtime", (int, float), 0.0)),
            target=_get(obj, "target", str),
        )


@dataclass(frozen=True)
class InitRequest:
    """Defaults for later commands, the host's wall clock (after a resume), thaw."""

    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    time_ns: int | None = None

    def to_json(self) -> JSON:
        return {"env": self.env, "user": self.user, "time_ns": self.time_ns}

    @classmethod
    def from_json(cls, obj: JSON) -> InitRequest:
        time_ns = _get(obj, "time_ns", int)
        if time_ns is not None and time_ns <= 0:
            raise ProtocolError("field 'time_ns': must be positive")
        return cls(env=_str_map(obj, "env"), user=_get(obj, "user", str), time_ns=time_ns)


def path_field(obj: JSON, key: str = "path") -> str:
    path = _get(obj, key, str)
    if not path or not path.startswith("/") or "\0" in path:
        raise ProtocolError(f"field {key!r}: expected an absolute path, got {path!r}")
    return str(path)


def mode_field(obj: JSON, key: str = "mode") -> int | None:
    mode = _get(obj, key, int)
    if mode is not None and not 0 <= mode <= 0o7777:
        raise ProtocolError(f"field {key!r}: {mode:o} is not a permission mode")
    return None if mode is None else int(mode)


def bool_field(obj: JSON, key: str, default: bool) -> bool:
    return bool(_get(obj, key, bool, default))


def signal_field(obj: JSON) -> int:
    sig = obj.get("signal", 15)
    if isinstance(sig, str):
        name = sig.upper() if sig.upper().startswith("SIG") else "SIG" + sig.upper()
        try:
            return int(_signal.Signals[name])
        except KeyError:
            raise ProtocolError(f"field 'signal': unknown signal {sig!r}") from None
    if isinstance(sig, bool) or not isinstance(sig, int) or not 0 < sig < 65:
        raise ProtocolError(f"field 'signal': expected a signal name or number, got {sig!r}")
    return sig


def float_field(obj: JSON, key: str) -> float | None:
    return _nonneg(obj, key)


def int_field(obj: JSON, key: str, default: int, low: int, high: int) -> int:
    value = int(_get(obj, key, int, default))
    if not low <= value <= high:
        raise ProtocolError(f"field {key!r}: {value} is not in {low}..{high}")
    return value


def get_str(obj: JSON, key: str) -> str:
    value = _get(obj, key, str)
    if value is None:
        raise ProtocolError(f"field {key!r} is required")
    return str(value)


# The fields of a CommandSpec on the wire (a session's first message carries more).
SPEC_FIELDS = ("argv", "shell", "env", "cwd", "user", "stdin", "timeout")


def error_body(code: str, message: str, **extra: Any) -> JSON:
    return {"error": {"code": code, "message": message, **extra}}


def error_line(code: str, message: str, **extra: Any) -> str:
    """An error as a session (WebSocket) message."""
    return json.dumps({"type": "error", **error_body(code, message, **extra)["error"]})


@dataclass(frozen=True)
class Metrics:
    """Guest resource use: cpu since the previous sample, memory and root disk in bytes."""

    cpu_count: int
    cpu_percent: float
    load1: float
    uptime: float
    mem_total: int
    mem_available: int
    disk_total: int
    disk_free: int

    @property
    def mem_used(self) -> int:
        return self.mem_total - self.mem_available

    @property
    def disk_used(self) -> int:
        return self.disk_total - self.disk_free

    def to_json(self) -> JSON:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, obj: JSON) -> Metrics:
        num = (int, float)
        return cls(
            cpu_count=_get(obj, "cpu_count", int, 0),
            cpu_percent=float(_get(obj, "cpu_percent", num, 0.0)),
            load1=float(_get(obj, "load1", num, 0.0)),
            uptime=float(_get(obj, "uptime", num, 0.0)),
            mem_total=_get(obj, "mem_total", int, 0),
            mem_available=_get(obj, "mem_available", int, 0),
            disk_total=_get(obj, "disk_total", int, 0),
            disk_free=_get(obj, "disk_free", int, 0),
        )
