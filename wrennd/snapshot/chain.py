"""Operations on a whole chain: collapse, export, inspect, verify (DESIGN.md §4).

Collapse merges every generation of a snapshot into one new sparse
generation (zero-fill as holes) and resets the generation counter.  It reads
only immutable generation files, writes the new one under a temporary name in
the store, and replaces the header only if it has not changed meanwhile; the
old header and files serve until the rename, so a crash at any point leaves
a valid snapshot.  Blocking: the daemon calls `collapse_in_background`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from wrennd._native import ffi, lib
from wrennd.durable import replacing, staged
from wrennd.log import kv
from wrennd.snapshot.errors import ChainChangedError, GenerationError, SnapshotError
from wrennd.snapshot.header import Header
from wrennd.snapshot.layout import (
    header_path,
    link_path,
    links_dir,
    store_path,
)
from wrennd.snapshot.mapping import Mapping
from wrennd.snapshot.opened import OpenSnapshot, open_snapshot
from wrennd.snapshot.store import (
    commit_locked,
    current_header_bytes,
    locked,
    read_header,
)

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _generation_fds(snap: OpenSnapshot) -> Iterator[list[int]]:
    fds = snap.open_generations()
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def copy_mapped(mapping: Mapping, fds: Sequence[int], paths: Sequence[Path], out_fd: int) -> None:
    """Write every non-zero entry's data (source i read from fds[i]) at its memory offset."""
    arr = ffi.new("int[]", list(fds) or [-1])
    failed = ffi.new("uint64_t *")
    rc = lib.wr_map_copy_out(mapping.entries, len(mapping), arr, len(fds), out_fd, failed)
    if rc < 0:
        e = mapping[int(failed[0])]
        where = paths[e.source] if e.source < len(paths) else f"source {e.source}"
        raise GenerationError(
            f"{where}: reading {e.length} bytes at {e.storage_offset:#x} (memory offset "
            f"{e.offset:#x}): {os.strerror(-rc)}"
        )


def write_flat(out: int, snap: OpenSnapshot, fds: Sequence[int]) -> None:
    """Write the snapshot's flat memory image into the empty file `out` (zero-fill as holes)."""
    os.ftruncate(out, snap.memory_size)
    copy_mapped(snap.header.mapping, fds, snap.generation_paths, out)


def export(snapshot_dir: Path, out: Path, store: Path | None = None) -> None:
    """Write the flat raw memory file the chain describes (a Full memfile's equivalent)."""
    snap = open_snapshot(snapshot_dir, store)
    with _generation_fds(snap) as fds, replacing(out) as out_fd:
        write_flat(out_fd, snap, fds)


def collapse(snapshot_dir: Path, store: Path) -> Header:
    """Merge the snapshot's chain into one generation; returns the new header.

    Raises ChainChangedError (and keeps the store clean) when the header was
    replaced while the new generation was being written."""
    # Under the lock no commit can run: the header bytes, the snapshot and the
    # open generation files all describe the same chain, which no garbage
    # collection can take away once open.
    with locked(store):
        old_bytes = header_path(snapshot_dir).read_bytes()
        snap = open_snapshot(snapshot_dir, store)
        fds = snap.open_generations()
    try:
        header = _write_collapsed(snapshot_dir, store, snap, fds, old_bytes)
    finally:
        for fd in fds:
            os.close(fd)
    log.info(
        "chain collapsed",
        extra=kv(
            snapshot=snapshot_dir,
            generations=len(snap.generation_ids),
            depth=snap.generation,
            build_id=header.build_id,
        ),
    )
    return header


def _write_collapsed(
    snapshot_dir: Path, store: Path, snap: OpenSnapshot, fds: Sequence[int], old_bytes: bytes
) -> Header:
    """Write the new generation under a temporary name, publish and commit it under the lock."""
    build_id = uuid.uuid4()
    mapping = snap.header.mapping.flattened()
    has_data = any(not e.is_zero for e in mapping)
    header = Header(
        snap.block_size,
        snap.memory_size,
        0,
        build_id,
        build_id,
        (build_id,) if has_data else (),
        mapping,
    )
    with staged(store_path(store, build_id), 0o400) as new:
        if has_data:
            write_flat(new.fd, snap, fds)
        with locked(store):  # published and linked at once: no collection in between
            if current_header_bytes(snapshot_dir) != old_bytes:
                raise ChainChangedError(f"{snapshot_dir}: the header changed meanwhile")
            if has_data:
                new.publish()
            commit_locked(snapshot_dir, store, header)
    return header


async def collapse_in_background(snapshot_dir: Path, store: Path) -> Header:
    """`collapse` on a worker thread, so the event loop keeps running."""
    return await asyncio.to_thread(collapse, snapshot_dir, store)


def _allocated(path: Path) -> int | None:
    """Bytes the filesystem allocated for the file (holes excluded); None if absent."""
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return None


def inspect(snapshot_dir: Path) -> dict[str, Any]:
    """A JSON-ready summary: generations, entries, bytes per generation, zero bytes."""
    h = read_header(snapshot_dir)
    per_source, zero, _ = h.mapping.source_stats(len(h.generations))
    return {
        "snapshot": str(snapshot_dir),
        "block_size": h.block_size,
        "memory_size": h.memory_size,
        "generation": h.generation,
        "build_id": str(h.build_id),
        "base_build_id": str(h.base_build_id),
        "entries": len(h.mapping),
        "zero_bytes": zero,
        "generations": [
            {
                "index": i,
                "build_id": str(g),
                "mapped_bytes": per_source[i],
                "allocated_bytes": _allocated(link_path(snapshot_dir, g)),
            }
            for i, g in enumerate(h.generations)
        ],
    }


def verify(snapshot_dir: Path, store: Path | None = None) -> list[str]:
    """Check the header and every mapped byte of every generation; [] when consistent."""
    problems: list[str] = []
    try:
        snap = open_snapshot(snapshot_dir, store)
    except SnapshotError as e:
        return [str(e)]
    # Links the header does not name (left by a crash before a header rename)
    # are garbage, not damage: the next commit or sweep removes them.
    ldir = links_dir(snapshot_dir)
    for path in snap.generation_paths:
        if store is not None and path.parent == ldir:
            twin = store_path(store, uuid.UUID(path.name))
            if not twin.exists():
                problems.append(f"{twin}: missing from the store (the snapshot still holds it)")
            elif not twin.samefile(path):
                problems.append(f"{path}: not the same file as {twin}")
    fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)  # read every mapped byte
    try:
        with _generation_fds(snap) as fds:
            copy_mapped(snap.header.mapping, fds, snap.generation_paths, fd)
    except GenerationError as e:
        problems.append(str(e))
    finally:
        os.close(fd)
    return problems
