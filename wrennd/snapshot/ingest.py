"""Ingest Firecracker memfiles into snapshots (DESIGN.md §4).

Full: every block of the memfile is memory.  All-zero blocks are punched out
and mapped to zero-fill; the file itself becomes generation 0 (moved into the
store, never copied when the store is on the same filesystem).

Diff: Firecracker writes the dirty pages at their own offsets into a fresh
sparse file; holes are clean pages.  Data extents (SEEK_DATA/SEEK_HOLE) map to
the new generation (a dirty all-zero block to zero-fill, never to the parent),
are overlaid on the parent's mapping and normalized.  Only the data extents
are read, so the cost follows the dirty bytes.  Dirty all-zero blocks stay
allocated in the Diff generation (unused) until the next collapse.

These calls block: from asyncio, run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from wrennd import durable
from wrennd._native import ffi, lib
from wrennd.log import kv
from wrennd.snapshot.errors import IngestError, UnsupportedFilesystemError
from wrennd.snapshot.header import Header
from wrennd.snapshot.layout import store_path
from wrennd.snapshot.mapping import ENTRY_SIZE, Mapping
from wrennd.snapshot.opened import resolve_generations
from wrennd.snapshot.store import commit_locked, locked, read_header

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 4096


@dataclass(frozen=True)
class ScanResult:
    mapping: Mapping
    data_bytes: int
    zero_bytes: int
    punched_bytes: int


def scan_memfile(
    fd: int, memory_size: int, block_size: int, source: int, diff: bool, punch: bool
) -> ScanResult:
    """Native scan of a memfile into mapping entries, optionally punching its zero blocks."""
    res = ffi.new("struct wr_scan_result *")
    mode = lib.WR_SCAN_DIFF if diff else lib.WR_SCAN_FULL
    rc = lib.wr_memfile_scan(fd, memory_size, block_size, source, mode, int(punch), res)
    if rc == -errno.EINVAL and diff:
        raise IngestError(
            f"data extent boundary at offset {res.bad_offset:#x} is not a multiple of the "
            f"block size {block_size}: not a Diff memfile of this memory"
        )
    if rc == -errno.EOPNOTSUPP:
        raise UnsupportedFilesystemError("the memfile's filesystem cannot punch holes")
    if rc < 0:
        raise OSError(-rc, f"scanning memfile: {os.strerror(-rc)}")
    try:
        mapping = Mapping.allocate(res.count)
        ffi.memmove(mapping.entries, res.entries, res.count * ENTRY_SIZE)
    finally:
        lib.wr_scan_result_free(res)
    return ScanResult(mapping, res.data_bytes, res.zero_bytes, res.punched_bytes)


def _copy_sparse(fd: int, mapping: Mapping, source: int, dest: Path) -> None:
    """Copy the blocks mapped to `source` into a fresh sparse file (tmp, fsync, rename)."""
    with durable.replacing(dest, 0o400) as out:
        os.ftruncate(out, os.fstat(fd).st_size)
        only = Mapping.from_entries(e for e in mapping if e.source == source)
        fds = ffi.new("int[]", [fd if s == source else -1 for s in range(source + 1)])
        failed = ffi.new("uint64_t *")
        rc = lib.wr_map_copy_out(only.entries, len(only), fds, source + 1, out, failed)
        if rc < 0:
            raise OSError(-rc, f"copying memfile into {dest}: {os.strerror(-rc)}")


def adopt_memfile(
    memfile: Path, fd: int, store: Path, build_id: uuid.UUID, mapping: Mapping, source: int
) -> Path:
    """Move the (scanned, fsynced) memfile into the store as generation `build_id`.

    Across filesystems the mapped blocks are copied sparsely and the memfile
    removed (the only case where guest memory is written a second time)."""
    store.mkdir(parents=True, exist_ok=True)
    dest = store_path(store, build_id)
    try:
        durable.move(memfile, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        log.warning(
            "memfile on another filesystem than the store: copying",
            extra=kv(memfile=memfile, store=store),
        )
        _copy_sparse(fd, mapping, source, dest)
        memfile.unlink()
    dest.chmod(0o400)
    return dest


def _open_memfile(memfile: Path) -> int:
    """Open a memfile that will become an immutable generation: a regular file, ours alone."""
    try:
        fd = os.open(memfile, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise IngestError(f"{memfile}: cannot open memfile: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise IngestError(
            f"{memfile}: a memfile must be a regular file with no other hard links "
            f"(it becomes an immutable generation); this one has {st.st_nlink} links"
        )
    return fd


@dataclass
class _Consumed:
    fd: int
    dest: Path | None = None  # where adopt_memfile put it in the store


@contextlib.contextmanager
def _consuming(memfile: Path) -> Iterator[_Consumed]:
    """Open a memfile that ingest consumes: adopted into the store (``dest`` set)
    or, when none of its data is kept, deleted.  On failure an adopted memfile
    is renamed back, so it is never lost."""
    c = _Consumed(_open_memfile(memfile))
    try:
        yield c
    except BaseException:
        if c.dest is not None:
            with contextlib.suppress(OSError):
                durable.move(c.dest, memfile)
        raise
    finally:
        os.close(c.fd)
    if c.dest is None:
        memfile.unlink()


def ingest_full(
    memfile: Path, snapshot_dir: Path, store: Path, block_size: int = DEFAULT_BLOCK_SIZE
) -> Header:
    """A Full memfile becomes `snapshot_dir` (generation 0); the memfile moves into the store."""
    with _consuming(memfile) as mem:
        fd = mem.fd
        size = os.fstat(fd).st_size
        if size <= 0 or size % block_size:
            raise IngestError(
                f"{memfile}: {size} bytes is not a positive multiple of the block size {block_size}"
            )
        build_id = uuid.uuid4()
        scan = scan_memfile(fd, size, block_size, 0, diff=False, punch=True)
        os.fsync(fd)
        generations = (build_id,) if scan.data_bytes else ()
        header = Header(block_size, size, 0, build_id, build_id, generations, scan.mapping)
        header.validate(str(memfile))
        with locked(store):  # adopted and linked at once: no collection in between
            if scan.data_bytes:
                mem.dest = adopt_memfile(memfile, fd, store, build_id, scan.mapping, 0)
            commit_locked(snapshot_dir, store, header)
    log.info(
        "full memfile ingested",
        extra=kv(
            snapshot=snapshot_dir,
            build_id=build_id,
            data_bytes=scan.data_bytes,
            zero_bytes=scan.zero_bytes,
            entries=len(scan.mapping),
        ),
    )
    return header


def check_allocation_unit(fd: int, block_size: int, memfile: Path) -> None:
    """Refuse a filesystem whose holes are coarser than a block: they would hide dirty data."""
    unit = os.fstat(fd).st_blksize
    if unit > block_size or block_size % unit:
        raise UnsupportedFilesystemError(
            f"{memfile}: the filesystem allocates in units of {unit} bytes; a Diff memfile "
            f"needs holes of {block_size} bytes (the block size), so dirty pages could not "
            "be told from clean ones"
        )


def prune_generations(
    mapping: Mapping, generations: tuple[uuid.UUID, ...]
) -> tuple[Mapping, tuple[uuid.UUID, ...]]:
    """Drop generations no entry names any more and renumber the sources."""
    used, _, _ = mapping.source_stats(len(generations))
    keep = [i for i, n in enumerate(used) if n]
    if len(keep) == len(generations):
        return mapping, generations
    remap = [0] * len(generations)
    for new, old in enumerate(keep):
        remap[old] = new
    return mapping.remapped(remap), tuple(generations[i] for i in keep)


def ingest_diff(memfile: Path, parent_dir: Path, snapshot_dir: Path, store: Path) -> Header:
    """A Diff memfile on top of snapshot `parent_dir` becomes `snapshot_dir` (may be the same).

    The memfile is scanned first, without the store lock; the overlay is done
    under the lock on the parent's header as it is then, so a collapse that
    finished meanwhile (same memory, other generations) is built upon rather
    than undone or raced by its garbage collection."""
    geometry = read_header(parent_dir)
    with _consuming(memfile) as mem:
        fd = mem.fd
        scan = _scan_diff(memfile, fd, geometry)
        with locked(store):
            parent = read_header(parent_dir)
            if (parent.block_size, parent.memory_size) != (
                geometry.block_size,
                geometry.memory_size,
            ):
                raise IngestError(f"{parent_dir}: the parent's memory layout changed meanwhile")
            resolve_generations(parent_dir, store, parent)
            header = _diff_header(parent, scan.mapping, uuid.uuid4())
            if header.build_id in header.generations:
                os.fsync(fd)
                mem.dest = adopt_memfile(memfile, fd, store, header.build_id, scan.mapping, 0)
            commit_locked(snapshot_dir, store, header)
    log.info(
        "diff memfile ingested",
        extra=kv(
            snapshot=snapshot_dir,
            build_id=header.build_id,
            generation=header.generation,
            dirty_bytes=scan.data_bytes + scan.zero_bytes,
            entries=len(header.mapping),
        ),
    )
    return header


def _scan_diff(memfile: Path, fd: int, parent: Header) -> ScanResult:
    """Dirty runs of a Diff memfile, data mapped to source 0 (renumbered at overlay)."""
    size = os.fstat(fd).st_size
    if size > parent.memory_size or size % parent.block_size:
        raise IngestError(
            f"{memfile}: {size} bytes is larger than the parent's memory "
            f"({parent.memory_size} bytes) or not a multiple of its block size "
            f"{parent.block_size}"
        )
    check_allocation_unit(fd, parent.block_size, memfile)
    # Dirty all-zero blocks map to zero-fill but are not punched: a punch is a
    # filesystem transaction each (most of a 1%-dirty ingest's time on ext4),
    # and the few blocks they keep allocated go at collapse.
    return scan_memfile(fd, size, parent.block_size, 0, diff=True, punch=False)


def _diff_header(parent: Header, dirty: Mapping, build_id: uuid.UUID) -> Header:
    """The parent's mapping with the dirty runs (source 0 of `dirty`) on top, as generation+1."""
    top = dirty.remapped([len(parent.generations)])
    merged = parent.mapping.overlay(top).normalized()
    mapping, generations = prune_generations(merged, (*parent.generations, build_id))
    return Header(
        parent.block_size,
        parent.memory_size,
        parent.generation + 1,
        build_id,
        parent.base_build_id,
        generations,
        mapping,
    )
