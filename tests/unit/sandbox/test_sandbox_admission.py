"""Memory admission: refused up front as resource_exhausted, counting what holds memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from wrennd.sandbox.admission import admit, host_memory_mib
from wrennd.sandbox.errors import NoCapacity
from wrennd.sandbox.record import SandboxRecord, SandboxState


def _rec(state: SandboxState, mib: int) -> SandboxRecord:
    return SandboxRecord(id="sb-000000000001", state=state, vcpus=1, memory_mib=mib, image="x")


def test_admits_within_the_budget_and_refuses_beyond() -> None:
    others = [_rec(SandboxState.RUNNING, 600), _rec(SandboxState.PAUSED, 10_000)]
    admit(400, others, 100, total_mib=1000)  # paused sandboxes hold no memory
    with pytest.raises(NoCapacity) as refused:
        admit(401, others, 100, total_mib=1000)
    assert refused.value.code == "resource_exhausted" and refused.value.resource == "memory"
    admit(900, others, 150, total_mib=1000)  # a deliberate overcommit


def test_a_tebibyte_is_refused_on_this_host() -> None:
    assert host_memory_mib() > 0
    with pytest.raises(NoCapacity):
        admit(1 << 20, [], 100)


def test_huge_page_guests_and_the_pool_are_outside_the_ram_budget(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  4194304 kB\nMemFree: 1 kB\nHugetlb:   1048576 kB\n")
    assert host_memory_mib(meminfo) == 3072, "the pool's 1 GiB is not RAM for 4k guests"
    meminfo.write_text("MemTotal:  4194304 kB\n")
    assert host_memory_mib(meminfo) == 4096
    huge = _rec(SandboxState.RUNNING, 2048)
    huge.memory_backing = "2m"
    admit(1000, [huge], 100, total_mib=1000)  # the 2m guest draws from the pool only
    with pytest.raises(NoCapacity, match="outside the huge page pools"):
        admit(1001, [huge], 100, total_mib=1000)
