"""The removal log: what a guest gave back (UFFD_EVENT_REMOVE) outlives the daemon.

The engine appends one record per REMOVE it reads (two u64 in host byte
order: the memory offset and length of the pages it marks removed) to a file
under ``run_dir``.  When a later daemon takes over the same VM's userfaultfd
(the hand-over, wrennd.sandbox.handover), it reads the log and marks those
ranges again, so a page the guest gave back comes back as zeros, never as
snapshot data.  A fresh resume starts a fresh log: its memory is the
snapshot's, from which nothing was given back yet.

The file is written with write(2) and not fsynced: a daemon crash loses
nothing the kernel has, and a host reboot ends the VM the log is about.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wrennd.uffd.engine import Engine

RECORD = struct.Struct("=QQ")


def open_log(path: Path, fresh: bool) -> int:
    """An O_APPEND fd on the log (emptied first when ``fresh``); the caller closes it."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    if fresh:
        flags |= os.O_TRUNC
    return os.open(path, flags, 0o600)


def read_log(path: Path) -> list[tuple[int, int]]:
    """The removed ranges, sorted and merged; none when the log does not exist.
    A torn last record (a crash mid-write cannot make one: 16-byte appends are
    whole, but a full disk can) is ignored."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    usable = len(data) - len(data) % RECORD.size
    ranges = sorted(r for r in RECORD.iter_unpack(data[:usable]) if r[1] > 0)
    merged: list[tuple[int, int]] = []
    for off, length in ranges:
        if merged and off <= merged[-1][0] + merged[-1][1]:
            start, prev = merged[-1]
            merged[-1] = (start, max(prev, off + length - start))
        else:
            merged.append((off, length))
    return merged


def attach(engine: Engine, path: Path, fresh: bool) -> None:
    """Log ``engine``'s REMOVEs to ``path``; unless ``fresh``, first mark what it holds."""
    if not fresh:
        engine.mark_removed(read_log(path))
    fd = open_log(path, fresh)
    try:
        engine.set_remove_log(fd)
    finally:
        os.close(fd)
