"""Serving only sound memory: which generations the engine verifies, what a bad
block it met is, and stopping the VMM that would otherwise run on without it."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wrennd.log import kv
from wrennd.uffd.engine import Checksummed, EngineStats

if TYPE_CHECKING:
    from wrennd.uffd.server import SnapshotMemory

log = logging.getLogger(__name__)

__all__ = ["Checksummed", "Corruption", "checksummed", "corruption_of", "stop_peer_if_corrupt"]


@dataclass(frozen=True)
class Corruption:
    """A block whose bytes did not match its checksum: never installed."""

    generation: Path  # the generation file (its name is the build id)
    block: int  # block index in that file (storage offset / block size)
    storage_offset: int

    def __str__(self) -> str:
        return (
            f"generation {self.generation.name} ({self.generation}): block {self.block} "
            f"(storage offset {self.storage_offset:#x}) does not match its checksum"
        )


def checksummed(memory: SnapshotMemory, verify_pages: bool, where: Path) -> Checksummed | None:
    """What the engine verifies against; None (and a log line saying why) for nothing."""
    if verify_pages and any(memory.checksums):
        return Checksummed(memory.checksums, memory.checksum_block_size)
    if memory.generations:
        why = "off" if not verify_pages else "the snapshot's generations have no checksums"
        log.info(
            "uffd: pages served without checksum verification", extra=kv(socket=where, why=why)
        )
    return None


def corruption_of(memory: SnapshotMemory, stats: EngineStats | None) -> Corruption | None:
    if stats is None or stats.corrupt_source < 0:
        return None
    path = memory.generations[stats.corrupt_source]
    block_size = memory.checksum_block_size or 1
    return Corruption(path, stats.corrupt_offset // block_size, stats.corrupt_offset)


def stop_peer_if_corrupt(bad: Corruption | None, peer_pid: int | None, where: Path) -> None:
    """A VMM whose memory met a bad block must not run on: once the uffd closes,
    the pages never installed would read as zeros.  The caller still holds the
    peer's connection open, so the pid is still the peer's."""
    if bad is None or peer_pid is None:
        return
    log.error(
        "uffd: snapshot data does not match its checksum; stopping the VMM",
        extra=kv(socket=where, peer_pid=peer_pid, corruption=str(bad)),
    )
    with contextlib.suppress(ProcessLookupError):
        pidfd = os.pidfd_open(peer_pid)
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        finally:
            os.close(pidfd)
