"""Which of a VMM's guest pages are KSM pages, from the kernel's own page flags.

For tests and benchmarks that check host.stats' KSM figures against the kernel:
/proc/PID/maps locates the anonymous mapping holding guest memory,
/proc/PID/pagemap gives each present page's frame, /proc/kpageflags its KPF_KSM
bit. Root only (frame numbers are hidden from others).
"""

from __future__ import annotations

import struct
from pathlib import Path

PAGE = 4096
KPF_KSM = 1 << 21
PFN_MASK = (1 << 55) - 1
PRESENT = 1 << 63
# The kernel merges a neighbouring anonymous VMA into guest memory's when they touch.
SLACK = 16 << 20


def guest_region(pid: int, size: int) -> tuple[int, int]:
    """(start, pages) of the anonymous mapping of ``size`` bytes (plus a merged
    neighbour of at most SLACK) that holds the VMM's guest memory."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split()
        start, end = (int(x, 16) for x in parts[0].split("-"))
        if size <= end - start < size + SLACK and len(parts) == 5:
            return start, (end - start) // PAGE
    raise LookupError(f"no anonymous mapping of {size} bytes in process {pid}")


def ksm_pages(pid: int, start: int, pages: int) -> int:
    """How many of ``pages`` pages from ``start`` are mapped to a KSM page."""
    with open(f"/proc/{pid}/pagemap", "rb") as pm:
        pm.seek(start // PAGE * 8)
        entries = struct.unpack(f"{pages}Q", pm.read(pages * 8))
    merged = 0
    with open("/proc/kpageflags", "rb") as kf:
        for entry in entries:
            if entry & PRESENT:
                kf.seek((entry & PFN_MASK) * 8)
                merged += bool(struct.unpack("Q", kf.read(8))[0] & KPF_KSM)
    return merged


def guest_ksm_pages(pid: int, memory_bytes: int) -> int:
    """KSM pages in the guest memory of VMM ``pid``."""
    start, pages = guest_region(pid, memory_bytes)
    return ksm_pages(pid, start, pages)
