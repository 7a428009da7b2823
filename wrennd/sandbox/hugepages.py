"""Guest memory backing: 4 KiB pages, or 2 MiB hugetlb pages from the host's reserved pool.

A sandbox's ``memory_backing`` ("4k" or "2m") is fixed when it is created and
kept by its snapshots and templates: Firecracker restores a snapshot with the
page size it was taken with (``huge_pages`` in the machine configuration, and
``page_size`` in the UFFD handshake).  2 MiB pages come from the pool an
operator reserves (``vm.nr_hugepages``); Firecracker maps guest memory with
MAP_NORESERVE, so a pool that runs dry shows up as a SIGBUS in the VMM long
after it started.  The daemon therefore counts the pool before it starts a
VMM: free pages, minus those reserved by other mappings, minus what its own
2 MiB guests were promised and have not faulted in yet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from wrennd.sandbox.admission import HOLDING_MEMORY
from wrennd.sandbox.errors import NoCapacity, Refused
from wrennd.sandbox.record import SandboxRecord

MemoryBacking = Literal["4k", "2m"]
BACKINGS: tuple[MemoryBacking, ...] = ("4k", "2m")
HUGE_PAGE_SIZE = 2 << 20
HUGE_PAGE_KIB = HUGE_PAGE_SIZE >> 10
POOL = Path(f"/sys/kernel/mm/hugepages/hugepages-{HUGE_PAGE_KIB}kB")
# The 2 MiB pool's size (vm.nr_hugepages is the same only where 2 MiB is the default size).
NR_HUGEPAGES = POOL / "nr_hugepages"


def check_backing(memory_mib: int, backing: str) -> MemoryBacking:
    """The backing, if it is one and the memory size fits its page size (Refused otherwise)."""
    if backing not in BACKINGS:
        raise Refused(f"memory_backing must be one of {', '.join(BACKINGS)}, not {backing!r}")
    if backing == "2m" and memory_mib % (HUGE_PAGE_SIZE >> 20):
        raise Refused(
            f"memory_mib={memory_mib} is not a multiple of 2 MiB: a guest backed by 2 MiB"
            " pages needs a whole number of them",
            memory_mib=memory_mib,
            memory_backing=backing,
        )
    return "2m" if backing == "2m" else "4k"


def huge_pages_config(backing: str) -> Literal["None", "2M"]:
    """Firecracker's machine-config ``huge_pages`` for a backing."""
    return "2M" if backing == "2m" else "None"


def page_size(backing: str, base: int) -> int:
    """The page size the VMM maps guest memory with (and announces in the handshake)."""
    return HUGE_PAGE_SIZE if backing == "2m" else base


def pages_of(memory_mib: int) -> int:
    return (memory_mib << 20) // HUGE_PAGE_SIZE


@dataclass(frozen=True)
class Pool:
    """The host's 2 MiB hugetlb pool (sysfs counts; all zero where hugetlb is absent)."""

    total: int
    free: int
    reserved: int

    @classmethod
    def read(cls, pool: Path = POOL) -> Pool:
        def count(name: str) -> int:
            try:
                return int((pool / name).read_text())
            except FileNotFoundError:
                return 0  # no 2 MiB hugetlb support: an empty pool

        return cls(count("nr_hugepages"), count("free_hugepages"), count("resv_hugepages"))


def backed_pages(pid: int | None, proc: Path = Path("/proc")) -> int:
    """How many 2 MiB pages a VMM has faulted in (hugetlb lines of smaps_rollup); 0 if
    it is not (or no longer) there."""
    if pid is None:
        return 0
    kib = 0
    with contextlib.suppress(OSError):
        for line in (proc / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Hugetlb:", "Shared_Hugetlb:")):
                kib += int(line.split()[1])
    return kib // HUGE_PAGE_KIB


class HugePagesShort(NoCapacity):
    """Too few free 2 MiB pages for a guest (the API's resource_exhausted, with counts)."""

    def __init__(self, needed: int, pool: Pool, promised: int) -> None:
        available = max(0, pool.free - pool.reserved - promised)
        super().__init__(
            "huge_pages",
            f"a 2 MiB-backed guest needs {needed} huge pages; {pool.free} of {pool.total} are"
            f" free, {pool.reserved} of them reserved by other mappings and {promised} promised"
            f" to running 2 MiB guests, so {available} are available (reserve more with"
            f" sysctl vm.nr_hugepages, or in {NR_HUGEPAGES} where 2 MiB is not the default"
            " huge page size)",
        )
        self.data.update(
            needed=needed,
            free=pool.free,
            total=pool.total,
            reserved=pool.reserved,
            promised=promised,
            available=available,
            page_size_kib=HUGE_PAGE_KIB,
        )


def holders(records: Iterable[SandboxRecord]) -> list[tuple[int, int | None]]:
    """(memory_mib, VMM pid or None) of every 2 MiB guest that holds memory."""
    return [
        (r.memory_mib, r.vmm_pid)
        for r in records
        if r.memory_backing == "2m" and r.state in HOLDING_MEMORY
    ]


def promised(guests: Iterable[tuple[int, int | None]], proc: Path = Path("/proc")) -> int:
    """Pages the pool still owes those guests: their memory less what they faulted in."""
    return sum(max(0, pages_of(mib) - backed_pages(pid, proc)) for mib, pid in guests)


def admit(
    memory_mib: int,
    others: Iterable[tuple[int, int | None]],
    pool: Pool,
    proc: Path = Path("/proc"),
) -> None:
    """HugePagesShort unless a ``memory_mib`` guest fits in the pool beside ``others``
    (``holders``), each counted for the pages it has not faulted in yet."""
    needed = pages_of(memory_mib)
    owed = promised(others, proc)
    if needed > pool.free - pool.reserved - owed:
        raise HugePagesShort(needed, pool, owed)


def stats(records: Iterable[SandboxRecord], pool: Pool | None = None) -> dict[str, int]:
    """The pool as 2 MiB guests see it (host.stats ``huge_pages``)."""
    pool = Pool.read() if pool is None else pool
    guests = holders(records)
    owed = promised(guests)
    return {
        "page_size_kib": HUGE_PAGE_KIB,
        "total": pool.total,
        "free": pool.free,
        "reserved": pool.reserved,
        "promised": owed,
        "available": max(0, pool.free - pool.reserved - owed),
        "sandboxes": len(guests),
    }
