"""Who a VMM process is, without trusting a pid alone.

A pid is recycled; the pair (pid, start time in clock ticks since boot, from
``/proc/PID/stat``) names one process for the life of the host, and the API
socket on its command line says it is the VMM of that sandbox.  Records save
all three as soon as the process exists, so a daemon that starts later finds
exactly the VMMs that belong to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name; None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces or ')': split after the last.
    return stat[stat.rindex(b")") + 2 :].split()


def process_state(pid: int) -> str | None:
    """The one-letter state (``R``, ``S``, ``T``, ``Z``...); None if the process is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else fields[0].decode()


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def cmdline_names(pid: int, path: Path) -> bool:
    return cmdline_has(pid, str(path))


def cmdline_has(pid: int, word: str) -> bool:
    """``word`` is one whole argument of the process's command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.fsencode(word) in argv


@dataclass(frozen=True)
class VmmIdentity:
    pid: int
    start_time: int
    api_socket: Path
    # A jailed VMM names its socket by its path inside the chroot, the same in every
    # jail: it is known by this word of its command line instead (``--id=<sandbox>``).
    marker: str | None = None

    @classmethod
    def of(cls, pid: int, api_socket: Path) -> VmmIdentity | None:
        started = start_time(pid)
        return None if started is None else cls(pid, started, api_socket)

    def alive(self) -> bool:
        """The very process recorded is running (not a zombie) and is this sandbox's VMM."""
        return (
            start_time(self.pid) == self.start_time
            and process_state(self.pid) not in (None, "Z", "X")
            and (
                cmdline_names(self.pid, self.api_socket)
                if self.marker is None
                else cmdline_has(self.pid, self.marker)
            )
        )
