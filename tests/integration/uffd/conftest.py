"""Shared pieces of the cross-process uffd tests: snapshots built from random
generation files, a child process playing Firecracker, and leak checks."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.polling import wait_for
from wrennd.uffd.engine import SOURCE_ZERO, MapEntry
from wrennd.uffd.server import ServeResult, SnapshotMemory, UffdServer

CHILD = Path(__file__).with_name("uffd_child.py")
BLOCK = 4096


@dataclass
class BuiltSnapshot:
    memory: SnapshotMemory
    expected: bytes  # what every byte of guest memory must read as


def build_snapshot(
    directory: Path,
    memory_size: int,
    page_size: int = BLOCK,
    generations: int = 3,
    seed: int = 1,
    zero_share: float = 0.3,
    max_run_blocks: int = 64,
) -> BuiltSnapshot:
    """Random entries over `generations` files (+ zero-fill).  Generation 0 is
    packed (storage offsets run on from 0); the others hold each page at its
    own offset, as Firecracker's Diff memfiles do."""
    rng = random.Random(seed)
    gens = [bytearray(os.urandom(memory_size)) for _ in range(generations)]
    packed = bytearray()
    entries: list[MapEntry] = []
    expected = bytearray(memory_size)
    off = 0
    while off < memory_size:
        length = min(rng.randint(1, max_run_blocks) * BLOCK, memory_size - off)
        if rng.random() < zero_share:
            source, storage = SOURCE_ZERO, 0
        else:
            source = rng.randrange(generations)
            if source == 0:
                storage = len(packed)
                packed += gens[0][off : off + length]
            else:
                storage = off
            expected[off : off + length] = gens[source][off : off + length]
        if entries and entries[-1].source == source == SOURCE_ZERO:
            last = entries.pop()
            entries.append(MapEntry(last.offset, last.length + length, 0, SOURCE_ZERO))
        else:
            entries.append(MapEntry(off, length, storage, source))
        off += length
    paths = []
    for i in range(generations):
        p = directory / f"gen{i}"
        p.write_bytes(bytes(packed) if i == 0 else bytes(gens[i]))
        paths.append(p)
    memory = SnapshotMemory(memory_size, page_size, entries, paths)
    return BuiltSnapshot(memory, bytes(expected))


@dataclass
class Child:
    proc: asyncio.subprocess.Process
    outputs: dict[str, Path] = field(default_factory=dict)

    async def expect_line(self, text: str) -> None:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        assert line.decode().strip() == text, line

    async def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()

    async def finish(self) -> int:
        """Close stdin, read stdout to EOF, reap: leaves no transport behind."""
        await self.proc.communicate()
        assert self.proc.returncode is not None
        return self.proc.returncode

    def output(self, name: str) -> bytes:
        return self.outputs[name].read_bytes()


async def spawn_child(
    tmp_path: Path,
    socket_path: Path,
    regions: Sequence[int],
    ops: list[dict[str, Any]],
    **plan: Any,
) -> Child:
    outputs = {}
    for op in ops:
        if "out" in op:
            name = op["out"]
            outputs[name] = tmp_path / f"out-{name}"
            op["out"] = str(outputs[name])
    plan_path = tmp_path / f"plan-{os.urandom(4).hex()}.json"
    plan_path.write_text(json.dumps({"regions": list(regions), "ops": ops, **plan}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        str(socket_path),
        str(plan_path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    return Child(proc, outputs)


async def serve_child(
    server: UffdServer,
    tmp_path: Path,
    regions: Sequence[int],
    ops: list[dict[str, Any]],
    **plan: Any,
) -> tuple[ServeResult, Child]:
    """Run a child through its whole plan against a started server."""
    child = await spawn_child(tmp_path, server.socket_path, regions, ops, **plan)
    try:
        async with asyncio.timeout(60):
            result = await server.serve()
            rc = await child.finish()
    except BaseException:
        if child.proc.returncode is None:
            child.proc.kill()
            await child.finish()
        raise
    assert rc == 0, f"child exited with {rc}"
    return result, child


async def until(predicate: Callable[[], bool]) -> None:
    """Poll a condition on native state (the engine has no awaitable for it)."""
    await wait_for(predicate, timeout=30, interval=0.001)


def engine_threads() -> list[str]:
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except FileNotFoundError:
            continue
    return [n for n in names if n.startswith("wr-uffd")]


class LeakCheck:
    """Fds, engine threads and generation-file mappings before vs after."""

    def __init__(self, directory: Path) -> None:
        self.directory = str(directory)
        self.fds = self._fds()

    @staticmethod
    def _fds() -> dict[str, str]:
        out = {}
        for fd in Path("/proc/self/fd").iterdir():
            try:
                out[fd.name] = str(fd.readlink())
            except FileNotFoundError:
                continue
        return out

    def _maps(self) -> list[str]:
        return [
            ln for ln in Path("/proc/self/maps").read_text().splitlines() if self.directory in ln
        ]

    def check(self) -> None:
        now = self._fds()
        leaked = {fd: what for fd, what in now.items() if self.fds.get(fd) != what}
        assert not leaked, f"leaked fds: {leaked}"
        assert engine_threads() == [], "engine threads still running"
        assert self._maps() == [], f"generation files still mapped: {self._maps()}"


@pytest.fixture
def leak_check(tmp_path: Path) -> LeakCheck:
    return LeakCheck(tmp_path)


@pytest.fixture
def snapshot_factory(tmp_path: Path) -> Callable[..., BuiltSnapshot]:
    def make(memory_size: int, **kw: Any) -> BuiltSnapshot:
        d = tmp_path / f"snap-{os.urandom(3).hex()}"
        d.mkdir()
        return build_snapshot(d, memory_size, **kw)

    return make


class Kit:
    """The helpers above, handed to tests as a fixture (importlib import mode
    keeps conftest out of reach of a plain import)."""

    build_snapshot = staticmethod(build_snapshot)
    spawn_child = staticmethod(spawn_child)
    serve_child = staticmethod(serve_child)
    engine_threads = staticmethod(engine_threads)
    until = staticmethod(until)
    LeakCheck = LeakCheck


@pytest.fixture
def kit() -> type[Kit]:
    return Kit
