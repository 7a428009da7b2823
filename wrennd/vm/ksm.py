"""Kernel samepage merging (KSM) as the host exposes it: ksmd's knobs and counters in
/sys/kernel/mm/ksm, ksmd's CPU time, each process's /proc/PID/ksm_stat, and the
wrapper that starts a VMM with its memory mergeable.

The wrapper (``wrennd-merge-exec``, native/exec/merge_exec.c) calls
prctl(PR_SET_MEMORY_MERGE, 1) and execs the VMM: the flag belongs to the mm,
survives exec and fork, and registers every anonymous mapping with ksmd, so the
VMM needs no cooperation. Every read here is of procfs or sysfs, served from
kernel memory; writes to the knobs may wait for ksmd's mutex (call them off the
event loop).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from wrennd import features

KSM_SYSFS = Path("/sys/kernel/mm/ksm")
MERGE_EXEC = features.MERGE_EXEC
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# sizeof(struct ksm_rmap_item) on 64-bit: the kernel's own profit formula uses it.
RMAP_ITEM_BYTES = 64
# The knobs the daemon sets when it manages ksmd (and restores when it stops).
KNOBS = ("run", "pages_to_scan", "sleep_millisecs")
COUNTERS = (
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "full_scans",
    "ksm_zero_pages",
)


def available(root: Path = KSM_SYSFS) -> bool:
    """The kernel has KSM (CONFIG_KSM): its sysfs directory exists."""
    return (root / "run").exists()


def read_value(name: str, root: Path = KSM_SYSFS) -> int | None:
    """One knob or counter; None when this kernel does not have it."""
    try:
        return int((root / name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def read_knobs(root: Path = KSM_SYSFS) -> dict[str, int]:
    found = {name: read_value(name, root) for name in KNOBS}
    return {k: v for k, v in found.items() if v is not None}


def write_knobs(values: Mapping[str, int], root: Path = KSM_SYSFS) -> None:
    """Write knobs in the order given (blocking: ksmd's mutex)."""
    for name, value in values.items():
        if name not in KNOBS:
            raise ValueError(f"not a KSM knob the daemon sets: {name}")
        (root / name).write_text(f"{int(value)}\n")


def counters(root: Path = KSM_SYSFS) -> dict[str, int]:
    """pages_shared, pages_sharing, ... and profit_bytes: the kernel's general_profit, or
    the same formula computed where the kernel predates it (Linux < 6.4)."""
    found = {name: read_value(name, root) for name in COUNTERS}
    out = {k: v for k, v in found.items() if v is not None}
    profit = read_value("general_profit", root)
    if profit is None:
        tracked = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile")
        rmap_items = sum(out.get(k, 0) for k in tracked)
        profit = out.get("pages_sharing", 0) * PAGE_SIZE - rmap_items * RMAP_ITEM_BYTES
    out["profit_bytes"] = profit
    return out


def find_ksmd(proc: Path = Path("/proc")) -> int | None:
    """The pid of the ksmd kernel thread (a child of kthreadd, pid 2); None if none."""
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            comm_end = stat.rindex(")")
            if stat[stat.index("(") + 1 : comm_end] == "ksmd" and stat.split()[3] == "2":
                return int(entry.name)
    return None


def cpu_seconds(pid: int, proc: Path = Path("/proc")) -> float | None:
    """utime + stime of a process (fields 14 and 15 of /proc/PID/stat), in seconds."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def process_stat(pid: int, proc: Path = Path("/proc")) -> dict[str, int | bool] | None:
    """/proc/PID/ksm_stat (Linux >= 6.1; merge_any and profit from 6.4), parsed:
    numbers as ints, ``ksm_merge_any``/``ksm_mergeable`` as bools. None when the
    process is gone or the kernel has no such file."""
    try:
        text = (proc / str(pid) / "ksm_stat").read_text()
    except OSError:
        return None
    out: dict[str, int | bool] = {}
    for line in text.splitlines():
        key, _, value = line.replace(":", " ").partition(" ")
        value = value.strip()
        if value in ("yes", "no"):
            out[key] = value == "yes"
        elif value.lstrip("-").isdigit():
            out[key] = int(value)
    return out


def wrap(argv: Sequence[str], merge_exec: Path = MERGE_EXEC) -> list[str]:
    """The command line that runs ``argv`` with its memory mergeable."""
    if not argv or not os.path.isabs(argv[0]):
        raise ValueError(f"the VMM must be given by an absolute path: {argv[:1]}")
    return [str(merge_exec), *argv]
