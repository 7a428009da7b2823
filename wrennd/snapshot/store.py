"""The generation store and committing headers into snapshot directories.

Generation files live once in the store, named by build id, immutable.  A
snapshot directory holds a hard link to each generation its header names
(layout.py), so a store file's link count says how many headers name it.
A commit or delete checks the generations it unlinks and deletes those whose
store file is left with link count 1; `collect_garbage` (startup recovery)
does the same over the whole store.  `commit`
keeps the invariant "links in a snapshot dir == generations its header
names": it links first, renames the new header into place, then removes the
links the new header no longer names.  A crash in between leaves the old or
the new header valid with every file it names; the extra links it may leave
are removed by the next `sweep` of that directory.

Every mutation takes an exclusive flock on ``<store>/.lock`` so a garbage
collection never races a commit linking the file it is about to delete.  A
new generation enters the store (rename) and gets its first link in one
locked section; before that it is a flocked temporary file that cleanup
skips.  Long work (scans, copies) runs outside the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from wrennd.durable import atomic_write, fsync_dir, remove_stale_temps
from wrennd.snapshot.errors import ChainChangedError, GenerationError, SnapshotError
from wrennd.snapshot.header import Header, parse_header
from wrennd.snapshot.layout import (
    HEADER_NAME,
    PREFETCH_NAME,
    header_path,
    link_path,
    links_dir,
    parse_build_id,
    store_path,
)

LOCK_NAME = ".lock"


@contextlib.contextmanager
def locked(store: Path) -> Iterator[None]:
    """Hold the store's exclusive lock (blocking; call off the event loop)."""
    store.mkdir(parents=True, exist_ok=True)
    fd = os.open(store / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_header(snapshot_dir: Path) -> Header:
    path = header_path(snapshot_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SnapshotError(f"{snapshot_dir}: not a snapshot (no {HEADER_NAME})") from None
    return parse_header(data, str(path))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except FileNotFoundError:
        return False


def _link_generation(snapshot_dir: Path, store: Path, build_id: uuid.UUID) -> None:
    target = link_path(snapshot_dir, build_id)
    source = store_path(store, build_id)
    if _same_file(source, target):
        return
    if not source.exists():
        if target.exists():  # the store lost it but this snapshot still holds it: re-adopt
            os.link(target, source)
            return
        raise GenerationError(f"generation {build_id} is neither in {store} nor in {snapshot_dir}")
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError as e:
        if e.errno == errno.EXDEV:
            raise GenerationError(
                f"{snapshot_dir} and the store {store} are on different filesystems: "
                "generations are shared by hard link"
            ) from None
        raise


def sweep(snapshot_dir: Path, header: Header | None = None) -> list[Path]:
    """Remove links the header does not name and stale temporary files; return them."""
    if header is None:
        header = read_header(snapshot_dir)
    named = {str(g) for g in header.generations}
    ldir = links_dir(snapshot_dir)
    removed = [p for p in ldir.iterdir() if p.name not in named] if ldir.is_dir() else []
    for p in removed:
        p.unlink(missing_ok=True)
    removed += remove_stale_temps(snapshot_dir)
    if removed:
        fsync_dir(snapshot_dir)
        if ldir.is_dir():
            fsync_dir(ldir)
    return removed


def collect_garbage(store: Path) -> list[uuid.UUID]:
    """Delete store files no snapshot names (link count 1) and temporaries of crashed writers."""
    removed: list[uuid.UUID] = []
    with locked(store):
        remove_stale_temps(store)
        for p in store.iterdir():
            build_id = parse_build_id(p.name)
            if build_id is not None and p.is_file() and p.stat().st_nlink == 1:
                p.unlink()
                removed.append(build_id)
        fsync_dir(store)
    return removed


def _release_locked(store: Path, build_ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    """Delete those of `build_ids` whose store file no snapshot links any more."""
    removed = []
    for build_id in build_ids:
        path = store_path(store, build_id)
        try:
            if path.stat().st_nlink == 1:
                path.unlink()
                removed.append(build_id)
        except FileNotFoundError:
            continue
    if removed:
        fsync_dir(store)
    return removed


def commit(
    snapshot_dir: Path,
    store: Path,
    header: Header,
    expect: bytes | None = None,
) -> list[uuid.UUID]:
    """Make `header` the snapshot's header, with a link to every generation it names.

    With `expect`, commit only if the current header is still exactly those
    bytes (ChainChangedError otherwise): a background collapse must not
    replace a header a newer pause wrote meanwhile.  Returns the generations
    deleted from the store because no header names them any more."""
    header.validate(str(snapshot_dir))
    with locked(store):
        if expect is not None and current_header_bytes(snapshot_dir) != expect:
            raise ChainChangedError(f"{snapshot_dir}: the header changed meanwhile; not replaced")
        return commit_locked(snapshot_dir, store, header)


def commit_locked(snapshot_dir: Path, store: Path, header: Header) -> list[uuid.UUID]:
    """`commit` for a caller that already holds ``locked(store)``.

    Only the generations this directory stops naming can have become garbage,
    so only their store files are checked: the cost does not grow with the
    store."""
    data = header.to_bytes()
    snapshot_dir.mkdir(parents=True, exist_ok=True)
    ldir = links_dir(snapshot_dir)
    ldir.mkdir(exist_ok=True)
    for build_id in header.generations:
        _link_generation(snapshot_dir, store, build_id)
    fsync_dir(ldir)
    fsync_dir(snapshot_dir)
    atomic_write(header_path(snapshot_dir), data)
    dropped = [b for p in sweep(snapshot_dir, header) if (b := parse_build_id(p.name))]
    return _release_locked(store, dropped)


def current_header_bytes(snapshot_dir: Path) -> bytes | None:
    try:
        return header_path(snapshot_dir).read_bytes()
    except FileNotFoundError:
        return None


def delete_snapshot(snapshot_dir: Path, store: Path) -> list[uuid.UUID]:
    """Remove the snapshot's memory files (header first), then unreferenced generations.

    Other files in the directory (vmstate, ...) belong to other components and
    stay; the directory itself is removed when nothing else is left in it.
    Returns the generations deleted from the store."""
    with locked(store):
        header_path(snapshot_dir).unlink(missing_ok=True)
        fsync_dir(snapshot_dir)
        (snapshot_dir / PREFETCH_NAME).unlink(missing_ok=True)
        ldir = links_dir(snapshot_dir)
        held = [b for p in ldir.iterdir() if (b := parse_build_id(p.name))] if ldir.is_dir() else []
        shutil.rmtree(ldir, ignore_errors=True)
        remove_stale_temps(snapshot_dir)
        with contextlib.suppress(OSError):
            snapshot_dir.rmdir()
        return _release_locked(store, held)


def generation_files(store: Path) -> set[uuid.UUID]:
    """Build ids of the generation files in the store."""
    if not store.is_dir():
        return set()
    return {b for p in store.iterdir() if (b := parse_build_id(p.name)) is not None}


def recover(snapshot_dirs: Iterable[Path], store: Path) -> list[uuid.UUID]:
    """Startup recovery after a crash: sweep every snapshot directory, then collect garbage.

    A directory without a header (a crash before its first commit) loses its
    memory files.  Returns the generations removed from the store."""
    for sdir in snapshot_dirs:
        with locked(store):
            try:
                sweep(sdir)
            except SnapshotError:
                if not header_path(sdir).exists():
                    shutil.rmtree(links_dir(sdir), ignore_errors=True)
                    remove_stale_temps(sdir)
    return collect_garbage(store)
