"""At a pause: the next prefetch map, learnt from the resume that ends.

The rule itself is wrennd.snapshot.prefetch.learn_prefetch_map (pure); this
gathers its inputs: the engine's record (ServeResult) and the pages the
pause's Diff wrote (the entries of the generation it added).
"""

from __future__ import annotations

from pathlib import Path

from wrennd.snapshot import Header, write_prefetch_map
from wrennd.snapshot.prefetch import Range, learn_prefetch_map
from wrennd.uffd.server import ServeResult


def dirty_ranges(header: Header, kind: str) -> list[Range]:
    """Memory this pause's Diff wrote (a Full snapshot says nothing about it)."""
    if kind != "Diff" or header.build_id not in header.generations:
        return []
    newest = header.generations.index(header.build_id)
    return [(e.offset, e.length) for e in header.mapping if e.source == newest]


def prefetch_cap(max_bytes: int, memory_size: int) -> int:
    """`prefetch_max_bytes`; 0 means the memory size.  The learnt map never holds
    more than was resident at the pause (faults, dirty pages and the previous map
    are all cut to what was installed and not given back), so the default bounds
    it by that; a lower cap bounds the I/O a resume's prefetch may do.  Half of
    memory, tried first, cut a working set touched at random across a 256 MiB
    guest in 64 KiB windows to half, and half of it faulted on every resume
    (bench/lifecycle.py --cycles 6 --ws-order random)."""
    return max_bytes if max_bytes > 0 else memory_size


def record_prefetch_map(
    snapshot_dir: Path, result: ServeResult, header: Header, kind: str, max_bytes: int
) -> list[Range]:
    """Write the learnt map next to the snapshot (blocking) and return it."""
    ranges = learn_prefetch_map(
        previous=result.prefetch_map,
        faults=result.working_set,
        present=result.present,
        removed=result.removed,
        dirty=dirty_ranges(header, kind),
        cap_bytes=prefetch_cap(max_bytes, header.memory_size),
    )
    write_prefetch_map(snapshot_dir, ranges, header.memory_size)
    return ranges
