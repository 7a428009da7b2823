"""Crash safety: SIGKILL a collapse or a Diff ingest at random moments.

After each kill the snapshot must open, verify and export exactly the memory
of either the old or the new header, and one sweep + garbage collection must
leave the store holding exactly the generations the header names, with no
temporary files anywhere.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wrennd.durable import TMP_PREFIX
from wrennd.snapshot.chain import export, verify
from wrennd.snapshot.ingest import ingest_diff, ingest_full
from wrennd.snapshot.layout import links_dir
from wrennd.snapshot.store import collect_garbage, generation_files, read_header, sweep

BS = 4096
PAGES = 4096  # 16 MiB: long enough to be killed mid-way
ROUNDS = 12
# Kill delays span each operation's run time on this scale (ingest-diff is the quicker).
MAX_DELAY = {"collapse": 0.04, "ingest-diff": 0.015}

CHILD = """
import sys
from pathlib import Path
from wrennd.snapshot.chain import collapse
from wrennd.snapshot.ingest import ingest_diff
print("ready", flush=True)
sys.stdin.readline()
if sys.argv[1] == "collapse":
    collapse(Path(sys.argv[2]), Path(sys.argv[3]))
else:
    ingest_diff(Path(sys.argv[4]), Path(sys.argv[2]), Path(sys.argv[2]), Path(sys.argv[3]))
"""


def write_diff(path: Path, memory: bytearray, rng: random.Random) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, PAGES * BS)
        for p in rng.sample(range(PAGES), PAGES // 8):
            data = bytes(BS) if p % 7 == 0 else rng.randbytes(BS)
            os.pwrite(fd, data, p * BS)
            memory[p * BS : (p + 1) * BS] = data
    finally:
        os.close(fd)


def kill_during(args: list[str], delay: float) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == b"ready\n"
        child.stdin.write(b"go\n")
        child.stdin.flush()
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
        if child.stdin:
            child.stdin.close()
        if child.stdout:
            child.stdout.close()


@pytest.mark.parametrize("operation", ["collapse", "ingest-diff"])
def test_kill_at_random_points_leaves_a_valid_snapshot(tmp_path: Path, operation: str) -> None:
    rng = random.Random(operation)
    store, sdir = tmp_path / "store", tmp_path / "snap"
    memory = bytearray(rng.randbytes(PAGES * BS // 2) + bytes(PAGES * BS // 2))
    (tmp_path / "full.mem").write_bytes(bytes(memory))
    ingest_full(tmp_path / "full.mem", sdir, store)
    by_generation = {0: bytes(memory)}
    for _ in range(ROUNDS):
        before = read_header(sdir)
        diff = tmp_path / "diff.mem"
        write_diff(diff, memory, rng)
        if operation == "collapse":
            ingest_diff(diff, sdir, sdir, store)
            before = read_header(sdir)
            by_generation = {before.generation: bytes(memory), 0: bytes(memory)}
        else:
            by_generation = {before.generation: by_generation[before.generation],
                             before.generation + 1: bytes(memory)}  # fmt: skip
        kill_during(
            [operation, str(sdir), str(store), str(diff)], rng.uniform(0.0, MAX_DELAY[operation])
        )

        after = read_header(sdir)
        assert after.generation in by_generation
        assert verify(sdir, store) == []
        export(sdir, tmp_path / "out", store)
        assert (tmp_path / "out").read_bytes() == by_generation[after.generation]
        memory = bytearray(by_generation[after.generation])
        diff.unlink(missing_ok=True)

        sweep(sdir)
        collect_garbage(store)
        named = set(after.generations)
        assert generation_files(store) == named
        assert {p.name for p in links_dir(sdir).iterdir()} == {str(g) for g in named}
        assert not list(store.glob(f"{TMP_PREFIX}*")) and not list(sdir.glob(f"{TMP_PREFIX}*"))
