"""Memory admission: a create or resume is refused up front when the host cannot hold it.

Without it a VM larger than the host fails late, inside the VMM, as a
vmm_failure.  The budget is the host's RAM (``MemTotal``) times the configured
overcommit; what counts against it is the declared memory of every sandbox
that holds guest memory (running, or on its way in or out).  RAM reserved as
huge pages (``Hugetlb``) is not in the budget and 2 MiB-backed guests are not
counted in it: they draw from the pool alone (``hugepages.admit``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from wrennd.sandbox.errors import NoCapacity
from wrennd.sandbox.record import SandboxRecord, SandboxState

S = SandboxState
HOLDING_MEMORY = frozenset({S.CREATING, S.RUNNING, S.PAUSING, S.RESUMING})
MEMINFO = Path("/proc/meminfo")


def host_memory_mib(meminfo: Path = MEMINFO) -> int:
    """RAM for 4 KiB-backed guests: MemTotal less what the huge page pools hold."""
    kib = {}
    for line in meminfo.read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("MemTotal", "Hugetlb"):
            kib[key] = int(value.split()[0])
    if "MemTotal" not in kib:
        raise OSError(f"{meminfo} has no MemTotal line")
    return (kib["MemTotal"] - kib.get("Hugetlb", 0)) // 1024


def admit(
    wanted_mib: int,
    others: Iterable[SandboxRecord],
    overcommit_percent: int,
    total_mib: int | None = None,
) -> None:
    """NoCapacity("memory") unless ``wanted_mib`` fits beside the sandboxes holding memory."""
    total = host_memory_mib() if total_mib is None else total_mib
    budget = total * overcommit_percent // 100
    used = sum(
        r.memory_mib for r in others if r.state in HOLDING_MEMORY and r.memory_backing != "2m"
    )
    if used + wanted_mib > budget:
        raise NoCapacity(
            "memory",
            f"{wanted_mib} MiB asked, {used} MiB held by sandboxes, budget {budget} MiB"
            f" ({overcommit_percent}% of {total} MiB of RAM outside the huge page pools)",
        )
