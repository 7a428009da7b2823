"""Fixtures that run the real fcsim executable under the real launcher."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from wrennd_sim.fcsim import harness
from wrennd_sim.fcsim.harness import SimHandle

Launch = Callable[[str], Awaitable[SimHandle]]


@pytest.fixture
async def launch(tmp_path: Path) -> AsyncIterator[Launch]:
    sims: list[SimHandle] = []

    async def start(name: str) -> SimHandle:
        sim = await harness.launch(tmp_path / name, name)
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        await sim.close()
