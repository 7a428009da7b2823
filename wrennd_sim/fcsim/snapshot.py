"""Snapshot files with Firecracker's semantics: the memory file and the vmstate file.

Memory file: an existing file of exactly the guest memory size is written into
in place (so a Diff merges into the previous memfile, as Firecracker does);
any other file is truncated and extended to the memory size, sparse. A Full
snapshot writes every byte, a Diff writes only the dirty pages at their own
offsets and nothing else.

vmstate: fcsim's own JSON document (Firecracker's is a versioned binary
serialization of vCPU and device state, which fcsim does not have): the
machine configuration and devices needed to restore, and the memory layout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from wrennd.durable import atomic_write
from wrennd_sim.fcsim.memory import GuestMemory

VMSTATE_FORMAT = "fcsim-vmstate"
VMSTATE_VERSION = 1
_CHUNK = 4 * 1024 * 1024


class SnapshotFileError(ValueError):
    """A snapshot file cannot be written or is not a valid fcsim snapshot."""


def _open_memfile(path: Path, size: int) -> int:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise SnapshotFileError(f"memory file {path}: {e.strerror}") from e
    if os.fstat(fd).st_size != size:
        os.ftruncate(fd, 0)
        os.ftruncate(fd, size)
    return fd


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def write_memory(mem: GuestMemory, path: Path, diff: bool) -> int:
    """Write the memory file; return the bytes written. Blocking."""
    fd = _open_memfile(path, mem.size)
    written = 0
    try:
        with mem.view() as whole:
            runs = list(mem.dirty_runs()) if diff else [(0, mem.size)]
            for offset, length in runs:
                for start in range(offset, offset + length, _CHUNK):
                    end = min(start + _CHUNK, offset + length)
                    with whole[start:end] as part:
                        _pwrite_all(fd, part, start)
                    written += end - start
        os.fsync(fd)
    except OSError as e:
        raise SnapshotFileError(f"writing memory file {path}: {e.strerror}") from e
    finally:
        os.close(fd)
    mem.clear_dirty()
    return written


def write_vmstate(path: Path, state: dict[str, Any]) -> None:
    """Atomically and durably (wrennd.durable)."""
    doc = {"format": VMSTATE_FORMAT, "version": VMSTATE_VERSION, **state}
    try:
        atomic_write(path, json.dumps(doc, sort_keys=True).encode())
    except OSError as e:
        raise SnapshotFileError(f"writing vmstate {path}: {e.strerror}") from e


def read_vmstate(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise SnapshotFileError(f"vmstate {path}: {e.strerror}") from e
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise SnapshotFileError(f"vmstate {path} is not an fcsim snapshot: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != VMSTATE_FORMAT:
        raise SnapshotFileError(f"vmstate {path} is not an fcsim snapshot")
    if doc.get("version") != VMSTATE_VERSION:
        raise SnapshotFileError(
            f"vmstate {path}: version {doc.get('version')!r}, this fcsim reads {VMSTATE_VERSION}"
        )
    for key, kind in (("mem_size", int), ("page_size", int), ("machine_config", dict)):
        if not isinstance(doc.get(key), kind):
            raise SnapshotFileError(f"vmstate {path}: {key} missing or not {kind.__name__}")
    return doc
