"""Each memory snapshot keeps the disk state that belongs to it.

A pause ends with the layer copied beside the snapshot it was taken with
(``snapshot/rootfs.g<generation>.layer``: a reflink on btrfs/xfs).  When a
sandbox must go back to that snapshot (its VMM died with the daemon's UFFD
engine, a resume failed after the VM ran) the copy is put back over the layer,
so memory generation N is never paired with a disk that went on to N+k; the
record says so in ``recovered_from`` and a log line says what was lost.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from wrennd.log import kv
from wrennd.sandbox.environment import Deps
from wrennd.sandbox.record import SandboxRecord

log = logging.getLogger(__name__)
_PREFIX, _SUFFIX = "rootfs.g", ".layer"


def kept_disk(deps: Deps, rec: SandboxRecord, generation: int) -> Path:
    return deps.paths(rec.id).snapshot_dir / f"{_PREFIX}{generation}{_SUFFIX}"


async def keep(deps: Deps, rec: SandboxRecord, generation: int) -> None:
    """Copy the layer beside snapshot ``generation`` (no VMM may be writing it), then
    drop the copies of older generations."""
    dest = kept_disk(deps, rec, generation)
    how = await deps.storage.keep_layer(rec.id, dest)
    for old in dest.parent.glob(f"{_PREFIX}*{_SUFFIX}"):
        if old != dest:
            old.unlink(missing_ok=True)
    log.info("disk kept with snapshot", extra=kv(sandbox=rec.id, generation=generation, how=how))


def has_kept(deps: Deps, rec: SandboxRecord) -> bool:
    return rec.generation is not None and kept_disk(deps, rec, rec.generation).exists()


async def roll_back(deps: Deps, rec: SandboxRecord, reason: str) -> bool:
    """Put back the disk of the last snapshot and say so in the record; False (logged) if
    no copy was kept (a record from before copies were kept)."""
    if rec.generation is None:
        return False
    src = kept_disk(deps, rec, rec.generation)
    if not src.exists():
        log.error(
            "no disk kept with the snapshot: the layer keeps later writes",
            extra=kv(sandbox=rec.id, generation=rec.generation),
        )
        return False
    await deps.storage.restore_layer(rec.id, src)
    rec.recovered_from = {"generation": rec.generation, "at": time.time(), "reason": reason}
    log.warning(
        "sandbox rolled back to its last snapshot: memory and disk writes since are lost",
        extra=kv(sandbox=rec.id, generation=rec.generation, reason=reason),
    )
    return True


async def roll_back_quietly(deps: Deps, rec: SandboxRecord, reason: str) -> None:
    """As roll_back, for a path that must go on whatever happens (a failed resume)."""
    try:
        await roll_back(deps, rec, reason)
    except Exception as e:
        log.error("disk roll back failed", extra=kv(sandbox=rec.id, error=e))
