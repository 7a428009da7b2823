"""Guest memory: one real mapping of mem_size_mib, and the dirty pages written into it.

fcsim's guest does not execute instructions, so every write to guest memory is
made by fcsim itself on behalf of the control socket (write, dirty a fraction,
touch workloads). Dirty tracking therefore records those writes in a per-page
bitmap at the moment they are made: exact, free, and independent of kernel
options. Soft-dirty bits (CONFIG_MEM_SOFT_DIRTY) would also catch the pages a
UFFD handler installs with UFFDIO_COPY, which KVM's dirty log - what Firecracker
uses - does not count as written by the guest.
"""

from __future__ import annotations

import array
import ctypes
import hashlib
import mmap
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from wrennd_sim._simnative import ffi, lib
from wrennd_sim.uffd_peer import touch_order

PAGE_SIZE = mmap.PAGESIZE
HUGE_PAGE_SIZE = 2 * 1024 * 1024
MAP_HUGETLB = 0x40000
MIB = 1024 * 1024


class GuestMemoryError(ValueError):
    """Guest memory could not be set up or accessed as asked."""


@dataclass(frozen=True)
class TouchResult:
    pages: int
    seconds: float
    p50_ns: int
    p99_ns: int
    max_ns: int


class _MmapOwner:
    """Keeps a Python mmap and a ctypes view pinning its address; releases both."""

    def __init__(self, mm: mmap.mmap) -> None:
        self.mm: mmap.mmap | None = mm
        self.pin: ctypes.Array[ctypes.c_char] | None = (ctypes.c_char * len(mm)).from_buffer(mm)
        self.address = ctypes.addressof(self.pin)

    def close(self) -> None:
        self.pin = None
        if self.mm is not None:
            self.mm.close()
            self.mm = None


class GuestMemory:
    """The whole guest memory at one host address, plus its dirty-page bitmap.

    Access goes through ctypes.memmove, which releases the GIL: on a Uffd
    backend a touch of a missing page blocks until the handler serves it, and
    the API thread must stay responsive meanwhile.
    """

    def __init__(
        self,
        address: int,
        size: int,
        page_size: int,
        backend: str,
        release: Callable[[], None],
    ) -> None:
        self.address = address
        self.size = size
        self.page_size = page_size
        self.backend = backend
        self.track_dirty = False
        self._release: Callable[[], None] | None = release
        self._dirty = bytearray(size // page_size)

    # --- construction ---------------------------------------------------------
    @classmethod
    def _from_mmap(cls, mm: mmap.mmap, page_size: int, backend: str) -> GuestMemory:
        owner = _MmapOwner(mm)
        return cls(owner.address, len(mm), page_size, backend, owner.close)

    @classmethod
    def anonymous(cls, mem_size_mib: int, huge_pages: bool = False) -> GuestMemory:
        size = mem_size_mib * MIB
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        page = PAGE_SIZE
        if huge_pages:
            if mem_size_mib % 2:
                raise GuestMemoryError("mem_size_mib must be a multiple of 2 with 2M huge pages")
            flags |= MAP_HUGETLB
            page = HUGE_PAGE_SIZE
        try:
            mm = mmap.mmap(-1, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            what = "2M hugetlbfs pages" if huge_pages else "anonymous memory"
            raise GuestMemoryError(f"cannot map {mem_size_mib} MiB of {what}: {e}") from e
        return cls._from_mmap(mm, page, "anonymous")

    @classmethod
    def from_file(cls, path: Path, size: int, page_size: int) -> GuestMemory:
        """The File backend: a private (copy-on-write) mapping of the memory file."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise GuestMemoryError(f"memory file {path}: {e.strerror}") from e
        try:
            actual = os.fstat(fd).st_size
            if actual != size:
                raise GuestMemoryError(
                    f"memory file {path} is {actual} bytes, the snapshot says {size}"
                )
            mm = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        return cls._from_mmap(mm, page_size, "File")

    def close(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release()

    @property
    def closed(self) -> bool:
        return self._release is None

    # --- access (blocking: callers run these in a worker thread) ---------------
    def _check(self, offset: int, length: int) -> None:
        if self.closed:
            raise GuestMemoryError("guest memory is unmapped")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise GuestMemoryError(
                f"range [{offset}, {offset + length}) is outside guest memory of {self.size}"
            )

    def _mark(self, offset: int, length: int) -> None:
        if length:
            first = offset // self.page_size
            last = (offset + length - 1) // self.page_size
            self._dirty[first : last + 1] = b"\x01" * (last - first + 1)

    def write(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data))
        ctypes.memmove(self.address + offset, data, len(data))
        self._mark(offset, len(data))

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        out = (ctypes.c_char * length)()
        ctypes.memmove(out, self.address + offset, length)
        return out.raw

    def discard(self, offset: int, length: int) -> None:
        """madvise(MADV_DONTNEED) on whole pages, as a balloon inflation does: on the Uffd
        backend the handler gets a REMOVE (and this waits until it has read it); the
        pages read zeros afterwards.  Not marked dirty: KVM's dirty log does not see it."""
        self._check(offset, length)
        if offset % self.page_size or length % self.page_size:
            raise GuestMemoryError(f"discard [{offset}, +{length}) is not page aligned")
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        if libc.madvise(self.address + offset, length, mmap.MADV_DONTNEED) != 0:
            err = ctypes.get_errno()
            raise GuestMemoryError(f"madvise(MADV_DONTNEED): {os.strerror(err)}")

    def view(self) -> memoryview:
        """The whole memory as bytes (for writing snapshot files)."""
        self._check(0, 0)
        return memoryview((ctypes.c_char * self.size).from_address(self.address)).cast("B")

    def checksum(self) -> str:
        # One update over the whole memory: hashlib drops the GIL for it.
        with self.view() as whole:
            return hashlib.sha256(whole).hexdigest()

    def dirty_fraction(self, fraction: float, seed: int) -> int:
        """Write seed-derived content into ``fraction`` of the pages, chosen by ``seed``."""
        if not 0.0 <= fraction <= 1.0:
            raise GuestMemoryError(f"fraction {fraction}: expected 0..1")
        pages = self.size // PAGE_SIZE
        rng = random.Random(seed)
        chosen = rng.sample(range(pages), round(pages * fraction))
        for page in chosen:
            self.write(page * PAGE_SIZE, rng.randbytes(PAGE_SIZE))
        return len(chosen)

    def touch(self, count: int, order: str, arg: int, write: bool) -> TouchResult:
        """Touch ``count`` pages once each, in ``order`` (sequential, random seeded by
        ``arg``, strided by ``arg``), with the native toucher (GIL released): a read
        loads a word, a write stores one; each touch is timed."""
        pages = self.size // PAGE_SIZE
        if not 0 <= count <= pages:
            raise GuestMemoryError(f"count {count}: expected 0..{pages}")
        try:
            indices = touch_order(order, pages, arg)[:count]  # type: ignore[arg-type]
        except ValueError as e:
            raise GuestMemoryError(str(e)) from e
        self._check(0, 0)
        if count == 0:
            return TouchResult(0, 0.0, 0, 0, 0)
        lat = array.array("Q", bytes(8 * count))
        total = ffi.new("uint64_t *")
        t0 = time.perf_counter()
        lib.wr_touch(
            self.address,
            PAGE_SIZE,
            ffi.from_buffer("uint64_t[]", indices),
            count,
            int(write),
            ffi.from_buffer("uint64_t[]", lat),
            total,
        )
        elapsed = time.perf_counter() - t0
        if write:
            for page in indices:
                self._mark(page * PAGE_SIZE, 1)
        ordered = sorted(lat)
        return TouchResult(
            count,
            elapsed,
            ordered[count // 2],
            ordered[min(count - 1, count * 99 // 100)],
            ordered[-1],
        )

    # --- dirty pages --------------------------------------------------------------
    def dirty_count(self) -> int:
        return self._dirty.count(1)

    def dirty_runs(self) -> Iterator[tuple[int, int]]:
        """(offset, length) of each run of dirty pages, in order."""
        n = len(self._dirty)
        i = self._dirty.find(1)
        while i != -1:
            j = self._dirty.find(0, i)
            end = n if j == -1 else j
            yield i * self.page_size, (end - i) * self.page_size
            i = -1 if end == n else self._dirty.find(1, end)

    def clear_dirty(self) -> None:
        self._dirty[:] = bytes(len(self._dirty))
