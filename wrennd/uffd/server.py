"""UffdServer: serve one Firecracker's guest memory from a snapshot (DESIGN.md §5).

Order of events, which the caller relies on:

1. ``await server.start()`` maps the generation files (a bad snapshot fails
   here, before the VMM is told anything) and listens on the socket.
2. The caller sends ``PUT /snapshot/load`` with that socket as the backend
   path and, concurrently, awaits ``server.serve()``: it accepts one peer,
   reads the one handshake message (JSON regions + the uffd), checks it, and
   starts the engine.  ``server.ready`` is set once faults are being served:
   the load request itself faults, so the engine must be up before it returns.
3. ``serve()`` returns when the peer closes its end (Firecracker exited), the
   engine stops on its own (the VMM is gone, or an error), or ``stop()`` is
   called (before any peer connected: it raises ServeStopped).  The
   engine's threads are joined, its fds closed, files unmapped.

A malformed handshake (bad JSON, no fd, several fds, not a userfaultfd,
regions that do not match the snapshot) raises HandshakeError: the peer is
disconnected, received fds are closed, nothing is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wrennd.log import kv
from wrennd.uffd import handshake, integrity, removals
from wrennd.uffd.detach import Detacher, wake
from wrennd.uffd.engine import (
    BASE_PAGE_SIZE,
    DEFAULT_BATCH_BYTES,
    DEFAULT_PREFETCH_BATCH_BYTES,
    DEFAULT_WINDOW_MAX_BYTES,
    Engine,
    EngineConfigError,
    EngineStats,
    MapEntryLike,
    check_regions,
    check_snapshot,
)
from wrennd.uffd.handshake import HandshakeError, Region
from wrennd.uffd.integrity import Corruption
from wrennd.uffd.peer import ServeStopped, accept, peer_pid, wait_end

__all__ = ["ServeResult", "ServeStopped", "SnapshotMemory", "UffdServer", "listen"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotMemory:
    """What the server serves: a snapshot's memory mapping and its generation files."""

    memory_size: int
    # None: take the page size the VMM's handshake announces (the snapshot
    # header records only its block size)
    page_size: int | None
    entries: Sequence[MapEntryLike]  # or a cffi struct wr_map_entry[] ...
    generations: Sequence[Path]  # in source-index order
    prefetch: Sequence[tuple[int, int]] = ()
    entry_count: int | None = None  # ... with this many entries used
    # each generation's checksum file (None: none, served unchecked), in blocks of
    checksums: Sequence[Path | None] = ()
    checksum_block_size: int = 0  # ... this many bytes (the snapshot's block size)


@dataclass
class ServeResult:
    """Why serving ended, and the engine's final numbers."""

    reason: str  # "peer-closed", "engine-stopped" or "stopped"
    stats: EngineStats
    # what the next prefetch map is learnt from (wrennd.snapshot.prefetch.learn_prefetch_map)
    working_set: list[tuple[int, int]] = field(default_factory=list)
    stop_error: str = ""
    prefetch_map: list[tuple[int, int]] = field(default_factory=list)  # the map this resume had
    present: list[tuple[int, int]] = field(default_factory=list)  # installed, not given back
    removed: list[tuple[int, int]] = field(default_factory=list)  # given back by REMOVE


def listen(path: Path) -> socket.socket:
    """A non-blocking listening socket at `path` (replacing a stale socket file only)."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise FileExistsError(errno.EEXIST, f"{path} exists and is not a socket")
        path.unlink()  # a stale socket from an earlier run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(os.fspath(path))
        sock.listen(1)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _result(engine: Engine, reason: str, prefetch: Sequence[tuple[int, int]]) -> ServeResult:
    stats = engine.stats()
    return ServeResult(
        reason=reason,
        stats=stats,
        working_set=engine.working_set(),
        stop_error=os.strerror(-stats.stop_error) if stats.stop_error else "",
        prefetch_map=list(prefetch),
        present=engine.present(),
        removed=engine.removed(),
    )


def _check_files(m: SnapshotMemory) -> None:
    sizes = [p.stat().st_size for p in m.generations]
    check_snapshot(m.memory_size, BASE_PAGE_SIZE, m.entries, sizes, m.entry_count)


async def _receive_handshake(
    conn: socket.socket, memory: SnapshotMemory
) -> tuple[list[Region], int]:
    regions, uffd = await handshake.receive(conn)
    try:
        page_size = memory.page_size or regions[0].page_size
        try:
            check_regions(regions, memory.memory_size, page_size)
        except EngineConfigError as e:
            raise HandshakeError(f"regions do not match the snapshot: {e}") from None
    except BaseException:
        os.close(uffd)
        raise
    return regions, uffd


class UffdServer:
    """Accepts one peer speaking Firecracker's uffd protocol and serves it."""

    def __init__(
        self,
        socket_path: Path,
        memory: SnapshotMemory,
        *,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        prefetch: bool = True,
        prefetch_batch_bytes: int = DEFAULT_PREFETCH_BATCH_BYTES,
        handshake_timeout: float = 30.0,
        window_max_bytes: int = DEFAULT_WINDOW_MAX_BYTES,
        copy_mode: str = "auto",
        verify_pages: bool = True,
        fill: bool = False,
        prefetch_rate: int = 0,
        remove_log: Path | None = None,
        fresh_log: bool = True,
    ) -> None:
        """`verify_pages`: check each block against its generation's checksum as
        it is installed (generations without checksums are served unchecked).
        `prefetch_rate`: bytes/s the background install may take (0: no limit).
        `remove_log`: where REMOVEs are recorded (wrennd.uffd.removals); with
        `fresh_log` false its ranges are first marked removed (a hand-over)."""
        self.prefetch_rate = prefetch_rate
        self.remove_log = remove_log
        self.fresh_log = fresh_log
        self._uffd = -1
        self._peer: socket.socket | None = None
        self.socket_path = socket_path
        self.verify_pages = verify_pages
        self.memory = memory
        self.batch_bytes = batch_bytes
        self.prefetch = prefetch
        self.prefetch_batch_bytes = prefetch_batch_bytes
        self.window_max_bytes = window_max_bytes
        self.copy_mode = copy_mode
        self.handshake_timeout = handshake_timeout
        self.ready = asyncio.Event()
        self.regions: list[Region] = []
        self.peer_pid: int | None = None
        self._engine: Engine | None = None
        self._listener: socket.socket | None = None
        self._stop = asyncio.Event()
        self._final: EngineStats | None = None
        self._started = False
        self.detaching = Detacher(memory, fill)

    async def start(self, listen_socket: bool = True) -> None:
        """Map the snapshot (or, with the page size still unknown, check its
        files) and listen (not for a hand-over: its VMM is connected already).
        Blocking file work runs off the loop."""
        if self._listener is not None or self._started:
            raise RuntimeError("server already started")
        self._started = True
        loop = asyncio.get_running_loop()
        m = self.memory
        if m.page_size is not None:
            self._engine = await loop.run_in_executor(None, self._make_engine, m.page_size)
        else:
            await loop.run_in_executor(None, _check_files, m)
        if not listen_socket:
            return
        try:
            self._listener = listen(self.socket_path)
        except BaseException:
            self._close_engine()
            raise

    def _make_engine(self, page_size: int) -> Engine:
        engine = self._new_engine(page_size)
        try:
            engine.set_prefetch_rate(self.prefetch_rate)
            if self.remove_log is not None:
                removals.attach(engine, self.remove_log, self.fresh_log)
        except BaseException:
            engine.close()
            raise
        return engine

    def _new_engine(self, page_size: int) -> Engine:
        m = self.memory
        return Engine(
            memory_size=m.memory_size,
            page_size=page_size,
            entries=m.entries,
            entry_count=m.entry_count,
            sources=m.generations,
            batch_bytes=self.batch_bytes,
            prefetch_batch_bytes=self.prefetch_batch_bytes,
            prefetch=[*(m.prefetch if self.prefetch else ()), *self.detaching.ranges],
            window_max_bytes=self.window_max_bytes,
            copy_mode=self.copy_mode,
            checksums=self._checksums(),
        )

    def _checksums(self) -> integrity.Checksummed | None:
        return integrity.checksummed(self.memory, self.verify_pages, self.socket_path)

    def corruption(self) -> Corruption | None:
        """The bad block the engine met, if any (then it stopped serving)."""
        return integrity.corruption_of(self.memory, self.stats())

    @property
    def engine(self) -> Engine | None:
        return self._engine

    def stats(self) -> EngineStats | None:
        """Current engine stats (after serve() ended: the final ones)."""
        if self._engine is not None and self._engine.started:
            return self._engine.stats()
        return self._final

    async def serve(self) -> ServeResult:
        """Accept one peer, serve it until it goes away; see the module doc."""
        if self._listener is None:
            raise RuntimeError("start() the server first")
        conn = await accept(self._listener, self._stop)
        try:
            self.peer_pid = peer_pid(conn)
            try:
                async with asyncio.timeout(self.handshake_timeout):
                    regions, uffd = await _receive_handshake(conn, self.memory)
            except TimeoutError:
                raise HandshakeError(
                    f"no handshake within {self.handshake_timeout} s of connecting"
                ) from None
            await self._begin(uffd, regions)
        except BaseException:
            conn.close()
            raise
        return await self._serve_peer(conn)

    async def serve_handed(
        self, uffd: int, peer: socket.socket, regions: Sequence[Region]
    ) -> ServeResult:
        """Serve a VMM another process served until it died (the hand-over): its
        uffd, the peer socket of its handshake and the regions that handshake
        announced.  Faults that process read and never answered are woken, so
        they fault again and reach this engine.  Takes both fds."""
        if not self._started or self._listener is not None:
            os.close(uffd)
            peer.close()
            raise RuntimeError("start(listen_socket=False) the server first")
        try:
            self.peer_pid = peer_pid(peer)
            try:
                check_regions(regions, self.memory.memory_size, regions[0].page_size)
            except (EngineConfigError, IndexError) as e:
                os.close(uffd)
                raise HandshakeError(f"handed regions do not match the snapshot: {e}") from None
            await self._begin(uffd, list(regions))
            wake(uffd, self.regions)
        except BaseException:
            peer.close()
            raise
        return await self._serve_peer(peer)

    async def _begin(self, uffd: int, regions: list[Region]) -> None:
        """Start the engine on ``uffd`` (taken: closed on failure) and set ready."""
        try:
            if self._engine is None:
                loop = asyncio.get_running_loop()
                self._engine = await loop.run_in_executor(
                    None, self._make_engine, regions[0].page_size
                )
            self.detaching.keep(uffd)
            self._engine.start(uffd, regions)
        except EngineConfigError as e:
            os.close(uffd)
            raise HandshakeError(f"regions do not match the snapshot: {e}") from None
        except BaseException:
            os.close(uffd)
            raise
        self._uffd = uffd
        self.regions = regions
        self.ready.set()
        log.info(
            "uffd serving",
            extra=kv(socket=self.socket_path, peer_pid=self.peer_pid, regions=len(regions)),
        )

    async def _serve_peer(self, conn: socket.socket) -> ServeResult:
        self._peer = conn
        try:
            assert self._engine is not None
            reason = await wait_end(conn, self._engine.done_fd, self._stop)
            integrity.stop_peer_if_corrupt(self.corruption(), self.peer_pid, self.socket_path)
        finally:
            self._peer = None
            conn.close()
        return await self._finish(reason)

    def handover_fds(self) -> tuple[int, int] | None:
        """The served uffd and the peer socket's fd while serving (for the fd store:
        valid until control returns to the loop), else None."""
        engine = self._engine
        if self._peer is None or engine is None or not engine.started or self._final is not None:
            return None
        return self._uffd, self._peer.fileno()

    async def _finish(self, reason: str) -> ServeResult:
        engine = self._engine
        assert engine is not None
        await asyncio.get_running_loop().run_in_executor(None, engine.stop)
        reason = self.detaching.finish(self.regions, reason)
        result = _result(engine, reason, self.memory.prefetch)
        self._final = result.stats
        log.info(
            "uffd served",
            extra=kv(
                socket=self.socket_path,
                reason=reason,
                faults=result.stats.faults,
                pages=result.stats.copy_pages + result.stats.zero_pages,
                error=result.stop_error,
            ),
        )
        self._close_engine()
        return result

    def stop(self) -> None:
        """Ask serve() to end: it joins the engine and returns, or, with no peer
        connected yet, raises ServeStopped."""
        self._stop.set()

    def _close_engine(self) -> None:
        if self._engine is not None:
            if self._engine.started and self._final is None:
                self._final = self._engine.stats()
            self._engine.close()
            self._engine = None

    async def close(self) -> None:
        """Stop serving, release everything, remove the socket file."""
        self.detaching.close()
        if self._engine is not None:
            engine = self._engine
            await asyncio.get_running_loop().run_in_executor(None, engine.stop)
            self._close_engine()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
