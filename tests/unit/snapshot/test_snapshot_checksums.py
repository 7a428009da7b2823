"""Generation checksums: written at ingest, checked by verify and collapse,
carried over by collapse, collected with their generation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wrennd._native import ffi, lib
from wrennd.snapshot import ChecksumError, open_snapshot
from wrennd.snapshot.chain import collapse, export, verify
from wrennd.snapshot.checksums import checksum_path, load, store_checksum_path
from wrennd.snapshot.ingest import ingest_diff, ingest_full
from wrennd.snapshot.layout import link_path
from wrennd.snapshot.scrub import scrub
from wrennd.snapshot.store import collect_garbage, delete_snapshot, read_header

BS = 4096
PAGES = 32


def crc(data: bytes) -> int:
    return int(lib.wr_crc32c(0, ffi.from_buffer(data), len(data)))


def page(value: int) -> bytes:
    return bytes([value]) * BS


def write_memfile(path: Path, values: dict[int, int], full: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, PAGES * BS)
        for p, v in values.items():
            os.pwrite(fd, page(v), p * BS)
        if full:  # a Full memfile is written whole: zeros are data too
            os.pwrite(fd, bytes(BS), 3 * BS)
    finally:
        os.close(fd)


def flip(path: Path, offset: int) -> None:
    """Rot: one bit of a generation file changes behind everyone's back."""
    path.chmod(0o644)
    fd = os.open(path, os.O_RDWR)
    try:
        b = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([b[0] ^ 0x10]), offset)
    finally:
        os.close(fd)
    path.chmod(0o444)


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Path, Path]:
    """A snapshot of two generations: Full {0:1, 1:2, 7:3}, Diff {1:9, 12:5}."""
    store, snap = tmp_path / "store", tmp_path / "s"
    write_memfile(tmp_path / "full.mem", {0: 1, 1: 2, 7: 3}, full=True)
    ingest_full(tmp_path / "full.mem", snap, store)
    write_memfile(tmp_path / "diff.mem", {1: 9, 12: 5}, full=False)
    ingest_diff(tmp_path / "diff.mem", snap, snap, store)
    return snap, store


def test_ingest_records_a_checksum_per_mapped_block(chain: tuple[Path, Path]) -> None:
    snap, store = chain
    h = read_header(snap)
    full, diff = h.generations
    fsums = load(store_checksum_path(store, full), BS, PAGES * BS)
    dsums = load(store_checksum_path(store, diff), BS, PAGES * BS)
    assert fsums is not None and dsums is not None
    assert [fsums.values[i] for i in (0, 1, 7)] == [crc(page(1)), crc(page(2)), crc(page(3))]
    assert [dsums.values[i] for i in (1, 12)] == [crc(page(9)), crc(page(5))]
    assert dsums.values[2] == 0  # never dirtied: not written (a hole)
    assert verify(snap, store) == []


def test_a_flipped_byte_is_named_by_verify_and_stops_collapse(chain: tuple[Path, Path]) -> None:
    snap, store = chain
    full = read_header(snap).generations[0]
    flip(store / str(full), 7 * BS + 100)
    problems = verify(snap, store)
    assert len(problems) == 1
    assert str(full) in problems[0] and "block 7 " in problems[0]
    before = (snap / "memory.header").read_bytes()
    with pytest.raises(ChecksumError) as err:
        collapse(snap, store)
    assert err.value.block == 7
    assert (snap / "memory.header").read_bytes() == before  # nothing laundered
    cli = subprocess.run(
        [sys.executable, "-m", "wrennd.snapshot", "verify", "--snapshot", snap, "--store", store],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 1 and "block 7 " in cli.stderr and str(full) in cli.stderr


def test_checksums_survive_collapse(chain: tuple[Path, Path], tmp_path: Path) -> None:
    snap, store = chain
    export(snap, tmp_path / "before", store)
    old = read_header(snap).generations
    h = collapse(snap, store)
    (new,) = h.generations
    sums = load(store_checksum_path(store, new), BS, (store / str(new)).stat().st_size)
    assert sums is not None
    memory = (tmp_path / "before").read_bytes()
    for e in h.mapping:
        if not e.is_zero:
            for b in range(e.offset // BS, (e.offset + e.length) // BS):
                assert sums.values[b] == crc(memory[b * BS : (b + 1) * BS])
    assert verify(snap, store) == []
    # the old generations and their checksum files went together
    assert not any(store_checksum_path(store, g).exists() for g in old)
    flip(store / str(new), 12 * BS)
    assert "block 12 " in verify(snap, store)[0]


def test_old_generations_without_checksums_still_work(
    chain: tuple[Path, Path], tmp_path: Path
) -> None:
    snap, store = chain
    for g in read_header(snap).generations:
        store_checksum_path(store, g).unlink()
    snapshot = open_snapshot(snap, store)
    assert verify(snap, store) == []
    h = collapse(snap, store)  # computes the merged generation's checksums from its data
    sums = load(store_checksum_path(store, h.generations[0]), BS, PAGES * BS)
    assert sums is not None and sums.values[12] == crc(page(5))
    assert snapshot.header.memory_size == PAGES * BS


def test_a_damaged_checksum_file_is_a_problem_not_a_pass(chain: tuple[Path, Path]) -> None:
    snap, store = chain
    path = store_checksum_path(store, read_header(snap).generations[0])
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:10])
    assert "truncated checksum file" in verify(snap, store)[0]


def test_checksum_files_are_collected_with_their_generation(
    chain: tuple[Path, Path], tmp_path: Path
) -> None:
    snap, store = chain
    gens = read_header(snap).generations
    orphan = checksum_path(store / "00000000-0000-4000-8000-000000000000")
    orphan.write_bytes(b"left by a crash mid-ingest")
    collect_garbage(store)
    assert not orphan.exists()
    assert all(store_checksum_path(store, g).exists() for g in gens)
    delete_snapshot(snap, store)
    assert not any(store_checksum_path(store, g).exists() for g in gens)
    assert not link_path(snap, gens[0]).exists()


def test_scrub_checks_at_a_bounded_rate_and_names_rot(chain: tuple[Path, Path]) -> None:
    snap, store = chain
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    report = scrub(snap, store, rate_bytes=BS, sleep=sleep, clock=lambda: now[0])
    data = sum(e.length for e in read_header(snap).mapping if not e.is_zero)
    assert report.bytes_checked == data and report.corrupt is None and report.unchecked == []
    # one block per second: it took as long as reading every block at that rate
    assert now[0] == pytest.approx(data / BS)
    diff = read_header(snap).generations[1]
    flip(store / str(diff), 12 * BS + 5)
    report = scrub(snap, store, rate_bytes=1 << 30)
    assert report.corrupt is not None and report.corrupt.block == 12
    assert str(diff) in str(report.corrupt)


def test_scrub_stops_when_asked_and_lists_unchecked_generations(
    chain: tuple[Path, Path],
) -> None:
    snap, store = chain
    full = read_header(snap).generations[0]
    store_checksum_path(store, full).unlink()
    report = scrub(snap, store, rate_bytes=1 << 30)
    assert report.unchecked == [str(full)] and report.corrupt is None
    assert report.bytes_checked == 2 * BS  # only the Diff's blocks have checksums
    stopped = scrub(snap, store, rate_bytes=1 << 30, should_stop=lambda: True)
    assert stopped.stopped and stopped.bytes_checked == 0


def test_close_runs_are_written_together_and_far_ones_stay_holes() -> None:
    """Runs of one source closer than COALESCE_GAP bytes of checksums become one write;
    a run further away stays apart (the file stays sparse for a large guest)."""
    from types import SimpleNamespace

    from wrennd.snapshot.checksums import COALESCE_GAP, _spans

    far = (COALESCE_GAP // 4 + 10) * BS  # this many blocks beyond the gap

    def e(offset: int, length: int, source: int) -> SimpleNamespace:
        return SimpleNamespace(offset=offset, length=length, storage_offset=offset, source=source)

    mapping = [e(0, 2 * BS, 0), e(2 * BS, BS, 0xFFFF), e(5 * BS, BS, 0), e(5 * BS + far, BS, 0),
               e(9 * BS + far, 3 * BS, 1)]  # fmt: skip
    gap_end = 5 + far // BS
    assert _spans(mapping, 0, BS) == [(0, 6), (gap_end, gap_end + 1)]  # type: ignore[arg-type]
    assert _spans(mapping, 1, BS) == [(9 + far // BS, 12 + far // BS)]  # type: ignore[arg-type]
