"""Typed wrapper of the native UFFD engine (native/uffd_engine.h).

The engine serves page faults on its own C threads, without the GIL; Python
only configures it, starts it, reads its stats and stops it.  Inputs are
checked here first so a mistake is reported with what and where; the C side
checks again and refuses anything that slipped through.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from wrennd._native import ffi, lib
from wrennd.snapshot.checksums import ARRAY_OFFSET, open_checked
from wrennd.uffd.handshake import Region

SOURCE_ZERO = lib.WR_SOURCE_ZERO
BASE_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
DEFAULT_BATCH_BYTES = 64 * 1024
DEFAULT_PREFETCH_BATCH_BYTES = 1024 * 1024
# A sequential stream's window doubles up to this (README, "UFFD engine").
DEFAULT_WINDOW_MAX_BYTES = 1024 * 1024
COPY_MODES = {"auto": lib.WR_COPY_AUTO, "runs": lib.WR_COPY_RUNS, "bounce": lib.WR_COPY_BOUNCE}
LATENCY_BUCKETS = lib.WR_LAT_BUCKETS


class EngineConfigError(ValueError):
    """The snapshot, regions or generation files cannot be served as given."""


class MapEntryLike(Protocol):
    """A mapping entry: memory [offset, offset+length) comes from `source` at storage_offset."""

    @property
    def offset(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def storage_offset(self) -> int: ...
    @property
    def source(self) -> int: ...


@dataclass(frozen=True)
class MapEntry:
    offset: int
    length: int
    storage_offset: int
    source: int


@dataclass(frozen=True)
class EngineStats:
    faults: int
    copy_pages: int
    copy_bytes: int
    zero_pages: int
    zero_bytes: int
    batches: int
    prefetch_pages: int
    prefetch_batches: int
    prefetch_yields: int
    eexist: int
    eagain: int
    removes: int
    removed_pages: int
    removed_faults: int
    wakes: int
    bounce_batches: int
    window_grows: int
    lat_count: int
    lat_sum_ns: int
    lat_max_ns: int
    lat_hist: tuple[int, ...]
    running: bool
    prefetch_running: bool
    stop_error: int
    prefetch_error: int
    verified_blocks: int = 0  # blocks checked against their checksums before install
    corrupt_source: int = -1  # the generation of the first bad block (-1: none) ...
    corrupt_offset: int = 0  # ... and its storage offset; the engine stopped with EBADMSG
    remove_log_errors: int = 0  # REMOVE records the removal log could not take

    def latency_percentile_ns(self, q: float) -> int:
        """Upper bound of the log2 bucket holding the q-quantile (0 < q <= 1); 0 if no data."""
        if not 0 < q <= 1:
            raise ValueError(f"quantile {q} outside (0, 1]")
        rank = q * self.lat_count
        seen = 0
        for i, n in enumerate(self.lat_hist):
            seen += n
            if n and seen >= rank:
                return int(2 ** (i + 1))
        return 0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lat_hist"] = list(self.lat_hist)
        d["stop_reason"] = os.strerror(-self.stop_error) if self.stop_error else ""
        return d


_SCALAR_STATS = [f.name for f in fields(EngineStats) if f.name != "lat_hist"]


@dataclass(frozen=True)
class Checksummed:
    """Generation checksum files to verify pages against (wrennd.snapshot.checksums):
    files[i] for source i (None: unchecked), one CRC32C per `block_size` bytes."""

    files: Sequence[Path | None]
    block_size: int


def check_snapshot(
    memory_size: int,
    page_size: int,
    entries: Sequence[MapEntryLike],
    source_sizes: Sequence[int],
    count: int | None = None,
) -> None:
    """Raise EngineConfigError naming the first thing in the mapping the engine cannot serve.

    `entries` may also be a cffi ``struct wr_map_entry[]`` with `count` entries used.
    """
    if page_size < BASE_PAGE_SIZE or page_size & (page_size - 1):
        raise EngineConfigError(f"page size {page_size} is not a power of two >= {BASE_PAGE_SIZE}")
    if memory_size <= 0 or memory_size % page_size:
        raise EngineConfigError(
            f"memory size {memory_size} is not a positive multiple of the page size {page_size}"
        )
    offset = 0
    for i in range(len(entries) if count is None else count):
        e = entries[i]
        if e.offset != offset or e.length <= 0 or e.length % BASE_PAGE_SIZE:
            raise EngineConfigError(
                f"mapping entry {i} at {e.offset:#x}+{e.length:#x}: expected a page-aligned entry"
                f" starting at {offset:#x}"
            )
        if e.source != SOURCE_ZERO:
            if not 0 <= e.source < len(source_sizes):
                raise EngineConfigError(
                    f"mapping entry {i} names source {e.source}, but there are"
                    f" {len(source_sizes)} generation files"
                )
            if e.storage_offset < 0 or e.storage_offset + e.length > source_sizes[e.source]:
                raise EngineConfigError(
                    f"mapping entry {i} needs bytes {e.storage_offset:#x}+{e.length:#x} of"
                    f" generation {e.source}, which has {source_sizes[e.source]} bytes"
                )
        offset += e.length
    if offset != memory_size:
        raise EngineConfigError(f"mapping covers {offset} bytes, memory is {memory_size}")


def check_regions(regions: Sequence[Region], memory_size: int, page_size: int) -> None:
    """Raise EngineConfigError unless the regions describe exactly this memory and page size."""
    offset = 0
    for i, r in enumerate(regions):
        if r.page_size != page_size:
            raise EngineConfigError(
                f"region {i}: page size {r.page_size}, but the snapshot uses {page_size}"
            )
        if (
            r.offset != offset
            or r.size <= 0
            or r.size % page_size
            or r.base_host_virt_addr % page_size
        ):
            raise EngineConfigError(
                f"region {i} ({r}) is not page aligned and contiguous in offset"
            )
        offset += r.size
    if offset != memory_size:
        raise EngineConfigError(
            f"regions cover {offset} bytes of memory, but the snapshot has {memory_size}"
        )


def _ranges(items: Iterable[tuple[int, int]]) -> tuple[Any, int]:
    items = list(items)
    arr = ffi.new("struct wr_range[]", max(1, len(items)))
    for i, (off, length) in enumerate(items):
        arr[i].offset = off
        arr[i].length = length
    return arr, len(items)


class Engine:
    """One engine: the fault thread (and prefetch thread) for one restored VM."""

    def __init__(
        self,
        *,
        memory_size: int,
        page_size: int,
        entries: Sequence[MapEntryLike],
        sources: Sequence[str | Path],
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        prefetch_batch_bytes: int = DEFAULT_PREFETCH_BATCH_BYTES,
        prefetch: Iterable[tuple[int, int]] = (),
        entry_count: int | None = None,
        window_max_bytes: int = DEFAULT_WINDOW_MAX_BYTES,
        copy_mode: str = "auto",
        checksums: Checksummed | None = None,
    ) -> None:
        """`entries` is a sequence of entries or a cffi ``struct wr_map_entry[]``
        (as wrennd.snapshot's OpenSnapshot.entries, with its entry_count).
        `batch_bytes` is the smallest fault window, `window_max_bytes` the
        largest (at or below batch_bytes: the window never grows); `copy_mode`
        forces one install strategy ("runs", "bounce"), for measurements."""
        if batch_bytes <= 0 or prefetch_batch_bytes <= 0 or window_max_bytes <= 0:
            raise EngineConfigError("batch and window sizes must be positive")
        if copy_mode not in COPY_MODES:
            raise EngineConfigError(f"copy mode {copy_mode!r} is not one of {sorted(COPY_MODES)}")
        tuning = (batch_bytes, prefetch_batch_bytes, window_max_bytes, COPY_MODES[copy_mode])
        fds: list[int] = []
        self._ptr: Any = None
        try:
            for p in sources:
                fds.append(os.open(p, os.O_RDONLY | os.O_CLOEXEC))
            sizes = [os.fstat(fd).st_size for fd in fds]
            count = len(entries) if entry_count is None else entry_count
            check_snapshot(memory_size, page_size, entries, sizes, count)
            self._ptr = self._create(memory_size, page_size, tuning, entries, count, fds)
            if checksums is not None:
                self._set_checksums(checksums, sizes)
        except BaseException:
            self.close()
            raise
        finally:
            for fd in fds:
                os.close(fd)
        self.page_size = page_size
        self.memory_size = memory_size
        self.started = False
        arr, n = _ranges(prefetch)
        rc = lib.wr_engine_set_prefetch(self._ptr, arr, n) if n else 0
        if rc < 0:
            self.close()
            raise EngineConfigError(
                f"prefetch map refused ({os.strerror(-rc)}): ranges must lie inside"
                f" the {memory_size} bytes of memory"
            )

    def set_remove_log(self, fd: int) -> None:
        """Append every REMOVE to ``fd`` (wrennd.uffd.removals); the engine keeps a dup."""
        self._check(lib.wr_engine_set_remove_log(self._live(), fd), "setting the removal log")

    def mark_removed(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Memory a previous engine saw given back: zeros on the next fault, never data."""
        arr, n = _ranges(ranges)
        if n:
            self._check(lib.wr_engine_mark_removed(self._live(), arr, n), "marking removed ranges")

    def set_prefetch_rate(self, bytes_per_s: int) -> None:
        """Limit the prefetch thread (prefetch map and fill) to this many bytes/s; 0: none."""
        if bytes_per_s < 0:
            raise EngineConfigError(f"prefetch rate {bytes_per_s} is negative")
        self._check(lib.wr_engine_set_prefetch_rate(self._live(), bytes_per_s), "setting the rate")

    def _set_checksums(self, sums: Checksummed, sizes: Sequence[int]) -> None:
        for i, path in enumerate(sums.files):
            if path is None:
                continue
            fd, count = open_checked(path, sums.block_size, sizes[i])
            try:
                rc = lib.wr_engine_set_checksums(
                    self._ptr, i, fd, ARRAY_OFFSET, count, sums.block_size
                )
            finally:
                os.close(fd)
            if rc < 0:
                raise EngineConfigError(f"{path}: checksums refused: {os.strerror(-rc)}")

    @staticmethod
    def _create(
        memory_size: int,
        page_size: int,
        tuning: tuple[int, int, int, int],
        entries: Sequence[MapEntryLike],
        count: int,
        fds: Sequence[int],
    ) -> Any:
        cfg = ffi.new("struct wr_engine_config *")
        cfg.memory_size = memory_size
        cfg.page_size = page_size
        cfg.batch_bytes, cfg.prefetch_batch_bytes, cfg.window_max_bytes, cfg.copy_mode = tuning
        if isinstance(entries, ffi.CData):
            ents = entries  # already the C layout: the engine copies it
        else:
            ents = ffi.new("struct wr_map_entry[]", max(1, count))
            for i, e in enumerate(entries):
                ents[i].offset = e.offset
                ents[i].length = e.length
                ents[i].storage_offset = e.storage_offset
                ents[i].source = e.source
        srcs = ffi.new("int[]", list(fds) or [0])
        out = ffi.new("struct wr_engine **")
        rc = lib.wr_engine_create(cfg, ents, count, srcs, len(fds), out)
        if rc < 0:
            raise OSError(-rc, f"creating the uffd engine: {os.strerror(-rc)}")
        return out[0]

    def _check(self, rc: int, what: str) -> None:
        if rc < 0:
            raise OSError(-rc, f"{what}: {os.strerror(-rc)}")

    def _live(self) -> Any:
        if self._ptr is None:
            raise ValueError("engine is closed")
        return self._ptr

    def start(self, uffd: int, regions: Sequence[Region]) -> None:
        """Serve `uffd` for these handshake regions; the engine owns the fd once this returns."""
        check_regions(regions, self.memory_size, self.page_size)
        regs = ffi.new("struct wr_region[]", len(regions))
        for i, r in enumerate(regions):
            regs[i].base = r.base_host_virt_addr
            regs[i].size = r.size
            regs[i].offset = r.offset
        rc = lib.wr_engine_start(self._live(), uffd, regs, len(regions))
        self._check(rc, "starting the uffd engine")
        self.started = True

    @property
    def done_fd(self) -> int:
        """Readable once the fault thread has ended (see stats().stop_error)."""
        return int(lib.wr_engine_done_fd(self._live()))

    def stats(self) -> EngineStats:
        s = ffi.new("struct wr_engine_stats *")
        lib.wr_engine_stats(self._live(), s)
        values: dict[str, Any] = {name: getattr(s, name) for name in _SCALAR_STATS}
        for flag in ("running", "prefetch_running"):
            values[flag] = bool(values[flag])
        return EngineStats(lat_hist=tuple(s.lat_hist), **values)

    def working_set(self) -> list[tuple[int, int]]:
        """Demand-installed ranges in first-touch order: the next prefetch map."""
        ptr = self._live()
        n = lib.wr_engine_working_set(ptr, ffi.NULL, 0)
        while True:
            buf = ffi.new("struct wr_range[]", max(1, n))
            total = lib.wr_engine_working_set(ptr, buf, n)
            if total <= n:
                return [(buf[i].offset, buf[i].length) for i in range(total)]
            n = total

    def _state_ranges(self, which: int) -> list[tuple[int, int]]:
        ptr = self._live()
        n = 0
        while True:
            buf = ffi.new("struct wr_range[]", max(1, n))
            total = lib.wr_engine_ranges(ptr, which, buf, n)
            self._check(total, "listing the engine's page states")
            if total <= n:
                return [(buf[i].offset, buf[i].length) for i in range(total)]
            n = total

    def present(self) -> list[tuple[int, int]]:
        """Memory installed and not given back since, as sorted ranges."""
        return self._state_ranges(lib.WR_RANGES_PRESENT)

    def removed(self) -> list[tuple[int, int]]:
        """Memory given back by UFFD_EVENT_REMOVE and not faulted in again, sorted."""
        return self._state_ranges(lib.WR_RANGES_REMOVED)

    def stop(self) -> None:
        """Stop and join the engine's threads (blocks until they exit; quick)."""
        self._check(lib.wr_engine_stop(self._live()), "stopping the uffd engine")

    def close(self) -> None:
        """Stop, unmap the generation files and close the uffd."""
        if self._ptr is not None:
            lib.wr_engine_destroy(self._ptr)
            self._ptr = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
