"""Open a snapshot for a resume: the header, its generation files, its prefetch map."""

from __future__ import annotations

import logging
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wrennd.log import kv
from wrennd.snapshot.errors import GenerationError, HeaderError
from wrennd.snapshot.header import Header
from wrennd.snapshot.layout import link_path, store_path
from wrennd.snapshot.prefetch import Range, read_prefetch_map
from wrennd.snapshot.store import read_header

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenSnapshot:
    """A validated snapshot, ready to hand to the UFFD engine.

    ``entries`` is a cffi ``struct wr_map_entry[]`` of ``entry_count`` entries;
    entry source i is served from ``generation_paths[i]``.  The entries'
    memory belongs to this object: keep it alive while C code uses them.  Every generation
    file was present and long enough for every entry that names it when the
    snapshot was opened."""

    snapshot_dir: Path
    header: Header
    generation_paths: tuple[Path, ...]
    prefetch: tuple[Range, ...]

    @property
    def memory_size(self) -> int:
        return self.header.memory_size

    @property
    def block_size(self) -> int:
        return self.header.block_size

    @property
    def generation(self) -> int:
        return self.header.generation

    @property
    def build_id(self) -> uuid.UUID:
        return self.header.build_id

    @property
    def generation_ids(self) -> tuple[uuid.UUID, ...]:
        return self.header.generations

    @property
    def entries(self) -> Any:
        return self.header.mapping.entries

    @property
    def entry_count(self) -> int:
        return len(self.header.mapping)

    def open_generations(self) -> list[int]:
        """Open every generation file read-only (O_CLOEXEC), in source-index order.

        Once open, a later collapse or delete cannot take the data away (the
        files are immutable; unlinking keeps open inodes).  The caller closes
        the fds.  Raises GenerationError if a file vanished or shrank since
        open_snapshot."""
        _, _, ends = self.header.mapping.source_stats(len(self.generation_paths))
        fds: list[int] = []
        try:
            for i, path in enumerate(self.generation_paths):
                try:
                    fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
                except OSError as e:
                    raise GenerationError(f"{path}: generation {i}: {e.strerror}") from None
                size = os.fstat(fds[-1]).st_size
                if size < ends[i]:
                    raise GenerationError(
                        f"{path}: generation {i} is {size} bytes, its entries need {ends[i]}"
                    )
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds


def _generation_path(snapshot_dir: Path, store: Path | None, build_id: uuid.UUID) -> Path:
    """The snapshot's own link, else the store's file."""
    candidates = [link_path(snapshot_dir, build_id)]
    if store is not None:
        candidates.append(store_path(store, build_id))
    for p in candidates:
        if p.exists():
            return p
    raise GenerationError(
        f"{snapshot_dir}: generation {build_id} is missing (looked at "
        f"{', '.join(str(p) for p in candidates)})"
    )


def resolve_generations(snapshot_dir: Path, store: Path | None, header: Header) -> list[Path]:
    """Paths of the header's generation files, checked present, regular and long enough."""
    _, _, ends = header.mapping.source_stats(len(header.generations))
    paths = []
    for i, build_id in enumerate(header.generations):
        path = _generation_path(snapshot_dir, store, build_id)
        try:
            st = path.stat()
        except OSError as e:
            raise GenerationError(f"{path}: generation {i} unreadable: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise GenerationError(f"{path}: generation {i} is not a regular file")
        if st.st_size < ends[i]:
            raise GenerationError(
                f"{path}: generation {i} is {st.st_size} bytes, its entries need {ends[i]}"
            )
        if not os.access(path, os.R_OK):
            raise GenerationError(f"{path}: generation {i} is not readable")
        paths.append(path)
    return paths


def open_snapshot(snapshot_dir: Path | str, store: Path | str | None = None) -> OpenSnapshot:
    """Read and validate a snapshot; raises HeaderError or GenerationError.

    `store` is where generation files live (state_dir/memfiles); a generation
    is looked up in the snapshot's own ``memfiles/`` links first."""
    sdir = Path(snapshot_dir)
    header = read_header(sdir)
    paths = resolve_generations(sdir, None if store is None else Path(store), header)
    try:
        prefetch = read_prefetch_map(sdir, header.memory_size)
    except HeaderError as e:
        # Only a speed hint: without it every page is served on demand.
        log.warning("prefetch map ignored", extra=kv(error=e))
        prefetch = []
    return OpenSnapshot(sdir, header, tuple(paths), tuple(prefetch))
