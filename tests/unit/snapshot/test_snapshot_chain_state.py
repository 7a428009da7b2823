"""State-machine test of the snapshot chain against a byte-for-byte model of guest memory.

Rules: write pages (random data, all zeros, zeroing non-zero pages), take a
Full snapshot, take a Diff snapshot written the way Firecracker writes one
(fresh sparse file, dirty pages at their offsets, holes elsewhere), resume
from a snapshot, collapse, delete a snapshot.  After every step: every live
snapshot exports exactly its memory, verifies clean, and the store holds
exactly the generations the live headers name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from wrennd.snapshot.chain import collapse, export, verify
from wrennd.snapshot.ingest import ingest_diff, ingest_full
from wrennd.snapshot.layout import links_dir
from wrennd.snapshot.store import delete_snapshot, generation_files, read_header

BS = 4096
PAGES = 64
MEM = BS * PAGES

pages = st.lists(st.integers(0, PAGES - 1), min_size=1, max_size=12, unique=True)


class SnapshotChain(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # tmpfs when there is one: the model check is about mapping logic, and
        # disk fsyncs would dominate (the filesystem tests cover ext4/xfs/btrfs).
        shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
        self.root = Path(tempfile.mkdtemp(prefix="wr-snapchain-", dir=shm))
        self.store = self.root / "store"
        self.memory = bytearray(MEM)  # the running VM's memory
        self.dirty: set[int] = set()  # pages written since the last snapshot/resume
        self.current: str | None = None  # the snapshot the VM last paused into/resumed from
        self.snapshots: dict[str, bytes] = {}  # name -> memory it must hold
        self.counter = 0

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def _dir(self, name: str) -> Path:
        return self.root / "snaps" / name

    def _new_name(self) -> str:
        self.counter += 1
        return f"s{self.counter}"

    @rule(which=pages, fill=st.integers(0, 255), seed=st.integers(0, 2**32 - 1))
    def write_pages(self, which: list[int], fill: int, seed: int) -> None:
        """fill 0 writes all-zero pages (zeroing what was there); otherwise random bytes."""
        for i, p in enumerate(which):
            data = (
                bytes(BS) if fill == 0 else bytes((seed + i * 7 + k) % 251 + 1 for k in range(BS))
            )
            self.memory[p * BS : (p + 1) * BS] = data
            self.dirty.add(p)

    @rule()
    def full_snapshot(self) -> None:
        memfile = self.root / "full.mem"
        memfile.write_bytes(bytes(self.memory))  # Firecracker writes every page
        name = self._new_name()
        ingest_full(memfile, self._dir(name), self.store)
        assert not memfile.exists()
        self._paused(name)

    @precondition(lambda self: self.current is not None)
    @rule(in_place=st.booleans())
    def diff_snapshot(self, in_place: bool) -> None:
        assert self.current is not None
        memfile = self.root / "diff.mem"
        fd = os.open(memfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, MEM)
            for p in sorted(self.dirty):
                os.pwrite(fd, self.memory[p * BS : (p + 1) * BS], p * BS)
        finally:
            os.close(fd)
        name = self.current if in_place else self._new_name()
        ingest_diff(memfile, self._dir(self.current), self._dir(name), self.store)
        self._paused(name)

    def _paused(self, name: str) -> None:
        self.snapshots[name] = bytes(self.memory)
        self.current = name
        self.dirty.clear()

    @precondition(lambda self: self.snapshots)
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.snapshots)))
        self.memory = bytearray(self.snapshots[name])
        self.current = name
        self.dirty.clear()

    @precondition(lambda self: self.snapshots)
    @rule(data=st.data())
    def collapse_chain(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.snapshots)))
        header = collapse(self._dir(name), self.store)
        assert header.generation == 0
        assert len(header.generations) <= 1

    @precondition(lambda self: len(self.snapshots) > 1)
    @rule(data=st.data())
    def delete_old_snapshot(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(n for n in self.snapshots if n != self.current)))
        delete_snapshot(self._dir(name), self.store)
        del self.snapshots[name]
        assert not self._dir(name).exists()

    @invariant()
    def exports_match_and_nothing_leaks(self) -> None:
        named = set()
        for name, expected in self.snapshots.items():
            sdir = self._dir(name)
            out = self.root / "export.raw"
            export(sdir, out, self.store)
            assert out.read_bytes() == expected, f"snapshot {name} exports different memory"
            out.unlink()
            assert verify(sdir, self.store) == []
            header = read_header(sdir)
            ids = {str(g) for g in header.generations}
            assert {p.name for p in links_dir(sdir).iterdir()} == ids
            named |= set(header.generations)
        assert generation_files(self.store) == named


SnapshotChain.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSnapshotChain = SnapshotChain.TestCase
