"""Snapshot directory layout (files are written through wrennd.durable).

A snapshot directory holds (other components add vmstate, rootfs meta, ...)::

    <snapshot_dir>/memory.header        memory header v1 (wrennd.snapshot.header)
    <snapshot_dir>/memory.prefetch      prefetch map, optional (wrennd.snapshot.prefetch)
    <snapshot_dir>/memfiles/<build_id>  a hard link to <store>/<build_id> for every
                                        generation the header names, and nothing else

The generation store (default ``state_dir/memfiles``) holds every generation
file once, named by its build id (UUID, canonical 36-character form).  A
store file's link count minus one is the number of snapshot directories
whose header names it; a store file with link count 1 is garbage.
"""

from __future__ import annotations

import uuid
from pathlib import Path

HEADER_NAME = "memory.header"
PREFETCH_NAME = "memory.prefetch"
LINKS_DIR = "memfiles"


def header_path(snapshot_dir: Path) -> Path:
    return snapshot_dir / HEADER_NAME


def prefetch_path(snapshot_dir: Path) -> Path:
    return snapshot_dir / PREFETCH_NAME


def links_dir(snapshot_dir: Path) -> Path:
    return snapshot_dir / LINKS_DIR


def link_path(snapshot_dir: Path, build_id: uuid.UUID) -> Path:
    return snapshot_dir / LINKS_DIR / str(build_id)


def store_path(store: Path, build_id: uuid.UUID) -> Path:
    return store / str(build_id)


def parse_build_id(name: str) -> uuid.UUID | None:
    """The build id a file name stands for, or None when it is not one."""
    try:
        value = uuid.UUID(name)
    except ValueError:
        return None
    return value if str(value) == name else None
