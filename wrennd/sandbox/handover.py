"""The hand-over: a VM whose memory the UFFD engine still serves outlives the daemon.

While an engine serves a VM (a resume or clone not yet filled and detached),
its uffd and the peer socket of its handshake are kept in systemd's fd store
(sd_notify ``FDSTORE=1``, one fd per ``FDNAME``: ``uffd-<id>`` and
``uffdpeer-<id>``), and the handshake's regions in ``run/uffd.json``.  The
engine records every page the guest gives back in ``run/removed.log``
(wrennd.uffd.removals).  When the daemon dies, the VM's vCPUs wait on their
next missing page; the next daemon gets both fds back (``LISTEN_FDNAMES``),
adopts the VMM, and serves the same uffd from the sandbox's snapshot with the
removed pages marked (``adoption``).  When serving ends (pause, destroy,
detach, the VMM gone) both names are dropped from the store.

Without systemd (no ``NOTIFY_SOCKET``) or with ``uffd_handover = false``
nothing is stored: such a sandbox goes back to its last snapshot after a
crash, memory and disk together (``recovery``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from wrennd.durable import atomic_write
from wrennd.log import kv
from wrennd.sandbox.live import Live
from wrennd.uffd import handshake
from wrennd.uffd.handshake import Region
from wrennd.uffd.server import UffdServer

log = logging.getLogger(__name__)
UFFD, PEER = "uffd-", "uffdpeer-"


class FdStore(Protocol):
    """The service manager's fd store (wrennd.systemd.Notifier)."""

    @property
    def enabled(self) -> bool: ...

    def store_fd(self, name: str, fd: int) -> bool: ...

    def remove_stored(self, name: str) -> bool: ...


@dataclass
class Handed:
    """What a previous daemon left for one sandbox: its VMM's uffd, peer socket, regions."""

    uffd: int
    peer: socket.socket
    regions: list[Region]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.uffd)
        self.peer.close()


def regions_file(run: Path) -> Path:
    return run / "uffd.json"


def removal_log(run: Path) -> Path:
    return run / "removed.log"


class HandOver:
    def __init__(self, store: FdStore | None = None, handed: dict[str, int] | None = None) -> None:
        """``store``: where live engines' fds go (None or disabled: nowhere);
        ``handed``: the fds a previous daemon stored, by FDNAME."""
        self.store = store if store is not None and store.enabled else None
        self._handed = dict(handed or {})

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def has(self, sandbox_id: str) -> bool:
        return f"{UFFD}{sandbox_id}" in self._handed and f"{PEER}{sandbox_id}" in self._handed

    def take(self, sandbox_id: str, run: Path) -> Handed | None:
        """The fds and regions handed over for ``sandbox_id`` (now the caller's), or None."""
        if not self.has(sandbox_id):
            return None
        uffd = self._handed.pop(f"{UFFD}{sandbox_id}")
        peer = socket.socket(fileno=self._handed.pop(f"{PEER}{sandbox_id}"))
        try:
            regions = handshake.parse(regions_file(run).read_bytes())
        except (OSError, ValueError) as e:
            log.error("hand-over regions unreadable", extra=kv(sandbox=sandbox_id, error=e))
            Handed(uffd, peer, []).close()
            return None
        return Handed(uffd, peer, regions)

    def discard_unclaimed(self) -> None:
        """Close and drop from the store what no adopted sandbox took."""
        for name, fd in sorted(self._handed.items()):
            log.info("handed fd not claimed: dropped", extra=kv(name=name))
            with contextlib.suppress(OSError):
                os.close(fd)
            if self.store is not None:
                self.store.remove_stored(name)
        self._handed.clear()

    async def keep(self, sandbox_id: str, run: Path, server: UffdServer) -> bool:
        """Store a serving engine's uffd and peer (regions first, so a stored uffd always
        has them); True if stored.  Dropped again by ``forget`` when serving ends."""
        if self.store is None or server.handover_fds() is None:
            return False
        body = handshake.encode(server.regions)
        await asyncio.to_thread(atomic_write, regions_file(run), body)
        fds = server.handover_fds()  # again: the engine may have ended meanwhile
        if fds is None:
            return False
        stored = self.store.store_fd(f"{UFFD}{sandbox_id}", fds[0])
        stored = stored and self.store.store_fd(f"{PEER}{sandbox_id}", fds[1])
        if not stored:
            self.forget(sandbox_id)
        else:
            log.info("uffd kept in the fd store", extra=kv(sandbox=sandbox_id))
        return stored

    async def keep_while_served(self, run: Path, live: Live) -> None:
        """A running sandbox's engine (if it serves) goes to the store until it ends."""
        if live.uffd is None or live.serving is None or live.serving.done():
            return
        if await self.keep(live.sandbox_id, run, live.uffd):
            self.forget_when_done(live.sandbox_id, live)

    def forget_when_done(self, sandbox_id: str, live: Live) -> None:
        """Drop the stored fds once the engine of ``live`` (if any) stops serving."""
        if self.store is not None and live.serving is not None:
            live.serving.add_done_callback(lambda _: self.forget(sandbox_id))

    def forget(self, sandbox_id: str) -> None:
        """Serving ended: the store must not hand these fds to the next daemon."""
        if self.store is not None:
            self.store.remove_stored(f"{UFFD}{sandbox_id}")
            self.store.remove_stored(f"{PEER}{sandbox_id}")
