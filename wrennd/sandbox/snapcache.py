"""Opened snapshots, kept between a pause and the next resume.

Opening a snapshot reads and checks its header (a 256 MiB guest with a few
generations has tens of thousands of mapping entries), finds its generation
files and reads its prefetch map: tens of milliseconds to a second on a busy
host, on the path of every resume.  A snapshot does not change between the
pause that wrote it and the resume that reads it, so the opened form is kept
by snapshot directory and handed out again while the files it was read from
are the same ones: the header and prefetch map are replaced by rename (a new
inode), generation files are immutable.  A stale entry is never served: each
lookup compares the header's and prefetch map's identity first, and checks
that the generation and checksum files it named are still there (a checksum
file may be removed, e.g. by an operator after a repair).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from wrennd.snapshot import OpenSnapshot, open_snapshot
from wrennd.snapshot.layout import header_path, prefetch_path

Stamp = tuple[tuple[int, int, int, int] | None, ...]
DEFAULT_SIZE = 64


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def stamp(snapshot_dir: Path) -> Stamp:
    """Which header and prefetch map files the directory holds now."""
    return (_identity(header_path(snapshot_dir)), _identity(prefetch_path(snapshot_dir)))


def _still_there(snap: OpenSnapshot) -> bool:
    files = [*snap.generation_paths, *(p for p in snap.checksum_paths if p is not None)]
    return all(p.exists() for p in files)


class OpenedSnapshots:
    """``open(dir, store)`` as wrennd.snapshot.open_snapshot, served from memory while the
    directory's files are unchanged (blocking: call it off the loop)."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._kept: OrderedDict[Path, tuple[Stamp, OpenSnapshot]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def open(self, snapshot_dir: Path, store: Path) -> OpenSnapshot:
        key = snapshot_dir.resolve()
        before = stamp(key)
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None and kept[0] == before and _still_there(kept[1]):
                self._kept.move_to_end(key)
                self.hits += 1
                return kept[1]
            self.misses += 1
        snap = open_snapshot(key, store)
        # Kept only if nothing was replaced while it was being read.
        if stamp(key) == before:
            with self._lock:
                self._kept[key] = (before, snap)
                self._kept.move_to_end(key)
                while len(self._kept) > self.size:
                    self._kept.popitem(last=False)
        return snap

    def forget(self, snapshot_dir: Path) -> None:
        with self._lock:
            self._kept.pop(snapshot_dir.resolve(), None)
