"""The values SDK calls return."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ExecResult:
    """A finished command: its exit status and its output, byte for byte."""

    exit_code: int | None
    stdout: bytes
    stderr: bytes
    signal: int | None = None
    timed_out: bool = False
    pid: int = 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def text(self) -> str:
        """stdout as text (UTF-8, invalid bytes replaced)."""
        return self.stdout.decode("utf-8", "replace")


@dataclass(frozen=True)
class FileInfo:
    """A guest file's ``lstat`` (``type`` is file, dir, symlink or other)."""

    name: str
    path: str
    type: str
    size: int
    mode: int
    uid: int = 0
    gid: int = 0
    mtime: float = 0.0
    target: str | None = None
    sha256: str | None = None  # set by uploads: the digest of what was written

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> FileInfo:
        keys = cls.__dataclass_fields__
        return cls(**{k: v for k, v in obj.items() if k in keys})

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"


@dataclass(frozen=True)
class Transferred:
    """A finished download: where it went, how many bytes, their sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the daemon describes it (``raw`` has every field)."""

    id: str
    state: str
    image: str | None
    template: str | None
    vcpus: int
    memory_mib: int
    metadata: dict[str, str]
    created_at: float
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    memory_backing: str = "4k"  # "4k" or "2m" (2 MiB huge pages)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> SandboxInfo:
        return cls(
            id=obj["id"],
            state=obj["state"],
            image=obj.get("image"),
            template=obj.get("template"),
            vcpus=int(obj.get("vcpus", 0)),
            memory_mib=int(obj.get("memory_mib", 0)),
            metadata=dict(obj.get("metadata") or {}),
            created_at=float(obj.get("created_at", 0.0)),
            raw=obj,
            memory_backing=str(obj.get("memory_backing", "4k")),
        )

    @property
    def created(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.created_at).astimezone()
