"""Memory admission: refused up front as resource_exhausted, counting what holds memory."""

from __future__ import annotations

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
