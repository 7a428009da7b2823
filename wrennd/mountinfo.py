"""The mount table as /proc/PID/mountinfo gives it: one parser for every reader of it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SELF = Path("/proc/self/mountinfo")
# mountinfo writes these characters of a path as octal escapes.
_ESCAPES = (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\"))


@dataclass(frozen=True)
class Mount:
    target: Path
    fstype: str
    source: str


def _unescape(field: str) -> str:
    for code, char in _ESCAPES:
        field = field.replace(code, char)
    return field


def parse(text: str) -> list[Mount]:
    """``id parent major:minor root target options [optional...] - fstype source super``."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        source = _unescape(tail[1]) if len(tail) > 1 else ""
        mounts.append(Mount(Path(_unescape(fields[4])), tail[0], source))
    return mounts


def read(path: Path = SELF) -> list[Mount]:
    return parse(path.read_text())


def deepest_first(mounts: list[Mount]) -> list[Mount]:
    """The order to unmount in: a mount before the one it sits on."""
    return sorted(mounts, key=lambda m: len(m.target.parts), reverse=True)


def under(path: Path, mounts: list[Mount]) -> list[Mount]:
    """Mounts at or below ``path``, deepest first."""
    return deepest_first([m for m in mounts if m.target == path or path in m.target.parents])


def of_type(fstype: str, mounts: list[Mount]) -> Path | None:
    """Where the first mount of ``fstype`` is, or None."""
    return next((m.target for m in mounts if m.fstype == fstype), None)
