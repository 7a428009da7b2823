"""cgroup v2 for jailed VMMs: where the hierarchy is, which limits it can hold, removal.

The jailer (``--cgroup-version 2``) creates ``<cgroup2 root>/<parent>/<id>``
and writes each ``--cgroup file=value`` there. The daemon derives those
limits from the sandbox's vCPUs and memory, but only for controllers the
hierarchy offers: on a hybrid host (cpu and memory bound to v1) asking for
``cpu.max`` would make the jailer fail, so the limit is left out and logged.
Nothing removes a jail's cgroup when the VMM exits: the daemon does.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Collection
from pathlib import Path

from wrennd import mountinfo

CPU_PERIOD_US = 100_000
# What a VMM needs beside guest memory: Firecracker's own few MiB, fcsim's
# Python and the processes of its stand-in guest, the page cache of the rootfs.
MEMORY_OVERHEAD_MIB = 256
HUGE_PAGE = "2MB"


def cgroup2_root(table: Path = mountinfo.SELF) -> Path | None:
    """Where the cgroup2 hierarchy is mounted, or None."""
    return mountinfo.of_type("cgroup2", mountinfo.read(table))


def controllers(root: Path) -> frozenset[str]:
    """The controllers the hierarchy offers (those not bound to a v1 hierarchy)."""
    try:
        return frozenset((root / "cgroup.controllers").read_text().split())
    except FileNotFoundError:
        return frozenset()


def limits(vcpus: int, memory_mib: int, available: Collection[str]) -> dict[str, str]:
    """``--cgroup`` values for one VM: CPU time of ``vcpus`` cores, guest memory
    plus the VMM's overhead, and no more huge pages than the guest has memory."""
    wanted = {
        "cpu.max": ("cpu", f"{vcpus * CPU_PERIOD_US} {CPU_PERIOD_US}"),
        "memory.max": ("memory", str((memory_mib + MEMORY_OVERHEAD_MIB) << 20)),
        f"hugetlb.{HUGE_PAGE}.max": ("hugetlb", str(memory_mib << 20)),
    }
    return {key: value for key, (ctrl, value) in wanted.items() if ctrl in available}


def populated(path: Path) -> bool:
    """Whether a process still runs in the cgroup or below it (cgroup.events)."""
    try:
        return "populated 1" in (path / "cgroup.events").read_text().splitlines()
    except FileNotFoundError:
        return False


def remove(path: Path, limit: float = 5.0, settle: float = 0.0) -> bool:
    """Kill what is left in a cgroup and its children, then remove them. False: absent.

    ``settle``: seconds to let what is left exit by itself first (a VMM's helpers
    finishing their own clean-up) before it is killed."""
    if not path.is_dir():
        return False
    deadline = time.monotonic() + settle
    while populated(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    for child in sorted((p for p in path.iterdir() if p.is_dir()), reverse=True):
        remove(child, limit)
    with contextlib.suppress(FileNotFoundError):
        (path / "cgroup.kill").write_text("1")
    deadline = time.monotonic() + limit
    while True:
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            # EBUSY while the killed tasks are still exiting.
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise
        time.sleep(0.01)
