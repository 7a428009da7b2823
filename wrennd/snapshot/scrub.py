"""Scrub one snapshot: read every mapped block that has a checksum, at a bounded
rate, and compare (the daemon's background scrub runs this per snapshot).

Blocking; meant for a low-priority worker thread.  The generation files are
opened once, so a collapse or delete meanwhile cannot pull them away (they
are immutable; a rotten file stays rotten whoever still names it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from wrennd.snapshot import checksums
from wrennd.snapshot.chain import generation_fds
from wrennd.snapshot.errors import ChecksumError
from wrennd.snapshot.mapping import Entry, Mapping
from wrennd.snapshot.opened import open_snapshot

log = logging.getLogger(__name__)
PIECE_BYTES = 4 << 20  # verified per native call, between rate and stop checks


@dataclass
class ScrubReport:
    snapshot_dir: Path
    bytes_checked: int = 0
    unchecked: list[str] = field(default_factory=list)  # generations without checksums
    corrupt: ChecksumError | None = None
    stopped: bool = False  # asked to stop before the end


def _pieces(mapping: Mapping) -> list[Entry]:
    """The mapping's data entries cut into pieces of at most PIECE_BYTES."""
    out = []
    for e in mapping:
        if e.is_zero:
            continue
        for start in range(0, e.length, PIECE_BYTES):
            n = min(PIECE_BYTES, e.length - start)
            out.append(Entry(e.offset + start, n, e.source, e.storage_offset + start))
    return out


def scrub(
    snapshot_dir: Path,
    store: Path | None,
    rate_bytes: int,
    should_stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ScrubReport:
    """Check the snapshot's generation data against its checksums at no more
    than `rate_bytes` per second; the first bad block ends the scrub (report.corrupt).
    Header or file damage raises SnapshotError as open_snapshot does."""
    report = ScrubReport(snapshot_dir)
    snap = open_snapshot(snapshot_dir, store)
    sums = checksums.load_for(snap.generation_paths, snap.block_size, store)
    report.unchecked = [
        p.name for p, s in zip(snap.generation_paths, sums, strict=True) if s is None
    ]
    started = clock()
    with generation_fds(snap) as fds:
        for piece in _pieces(snap.header.mapping):
            if should_stop():
                report.stopped = True
                break
            if sums[piece.source] is None:
                continue
            one = Mapping.from_entries([piece])
            try:
                checksums.verify_mapping(one, fds, snap.generation_paths, sums, snap.block_size)
            except ChecksumError as e:
                report.corrupt = e
                break
            report.bytes_checked += piece.length
            ahead = report.bytes_checked / rate_bytes - (clock() - started)
            if ahead > 0:
                sleep(ahead)
    return report
