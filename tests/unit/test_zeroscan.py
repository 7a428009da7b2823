"""The native zero-block scanner, against a pure-Python model."""

from __future__ import annotations

import mmap
import os
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wrennd import zeroscan


def model(data: bytes, bs: int) -> list[bool]:
    return [not any(data[i : i + bs]) for i in range(0, len(data), bs)]


def as_list(bm: zeroscan.ZeroBitmap) -> list[bool]:
    return [bm.is_zero(i) for i in range(bm.nblocks)]


def runs_model(flags: list[bool], want: bool) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i, f in enumerate(flags):
        if f != want:
            continue
        if out and out[-1][0] + out[-1][1] == i:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out


@st.composite
def sparse_buffers(draw: st.DrawFn) -> tuple[bytes, int]:
    bs = draw(st.sampled_from([1, 7, 64, 100, 512, 4096, 4096 + 1]))
    length = draw(st.integers(0, 40_000))
    buf = bytearray(length)
    for pos in draw(st.lists(st.integers(0, max(0, length - 1)), max_size=12)):
        if length:
            buf[pos] = draw(st.integers(1, 255))
    return bytes(buf), bs


@given(sparse_buffers())
@settings(max_examples=300, deadline=None)
def test_buffer_matches_model(case: tuple[bytes, int]) -> None:
    data, bs = case
    bm = zeroscan.scan_buffer(data, bs)
    want = model(data, bs)
    assert as_list(bm) == want
    assert bm.zero_count == sum(want)
    assert list(bm.runs(True)) == runs_model(want, True)
    assert list(bm.runs(False)) == runs_model(want, False)


@given(st.binary(max_size=5000), st.integers(1, 300))
@settings(max_examples=200, deadline=None)
def test_random_bytes(data: bytes, bs: int) -> None:
    assert as_list(zeroscan.scan_buffer(data, bs)) == model(data, bs)


def test_one_nonzero_byte_at_every_position() -> None:
    bs = 4096
    buf = bytearray(bs * 3)
    for pos in range(bs):
        buf[bs + pos] = 1
        assert as_list(zeroscan.scan_buffer(buf, bs)) == [True, False, True]
        buf[bs + pos] = 0


def test_all_zero_and_tail_block() -> None:
    bm = zeroscan.scan_buffer(bytes(10_000), 4096)
    assert (bm.nblocks, bm.zero_count) == (3, 3)
    bm = zeroscan.scan_buffer(bytes(9_999) + b"\x01", 4096)
    assert as_list(bm) == [True, True, False]


def test_bad_block_size() -> None:
    with pytest.raises(ValueError, match="block_size"):
        zeroscan.scan_buffer(b"x", 0)


def _write_sparse(path: Path, blocks: dict[int, bytes], nblocks: int, bs: int) -> bytes:
    mem = bytearray(nblocks * bs)
    with path.open("wb") as f:
        f.truncate(nblocks * bs)
        for b, content in blocks.items():
            f.seek(b * bs)
            f.write(content)
            mem[b * bs : b * bs + len(content)] = content
    return bytes(mem)


@given(
    st.dictionaries(
        st.integers(0, 63),
        st.sampled_from([bytes(4096), b"\x01" + bytes(4095), bytes(4095) + b"\xff"]),
    ),
    st.integers(0, 63),
    st.integers(0, 64 * 4096),
)
@settings(max_examples=60, deadline=None)
def test_file_with_holes(
    tmp_path_factory: pytest.TempPathFactory, blocks: dict[int, bytes], start: int, length: int
) -> None:
    bs = 4096
    path = tmp_path_factory.mktemp("zs") / "mem"
    mem = _write_sparse(path, blocks, 64, bs)
    length = min(length, len(mem) - start * bs)
    with path.open("rb") as f:
        bm = zeroscan.scan_fd(f.fileno(), start * bs, length, bs)
    assert as_list(bm) == model(mem[start * bs : start * bs + length], bs)


def test_file_holes_are_not_read(tmp_path: Path) -> None:
    # A 64 GiB sparse file with one data block scans instantly: holes are skipped.
    path = tmp_path / "huge"
    with path.open("wb") as f:
        f.truncate(64 << 30)
        f.seek(5 << 30)
        f.write(b"\x07" * 4096)
    t0 = time.monotonic()
    with path.open("rb") as f:
        bm = zeroscan.scan_fd(f.fileno(), 0, 64 << 30, 2 << 20)
    assert time.monotonic() - t0 < 2.0
    assert bm.nblocks - bm.zero_count == 1
    assert not bm.is_zero((5 << 30) // (2 << 20))


def test_file_range_past_eof(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(8192))
    with path.open("rb") as f, pytest.raises(OSError, match="past the end"):
        zeroscan.scan_fd(f.fileno(), 4096, 8192, 4096)


def test_scan_releases_the_gil() -> None:
    """A Python thread keeps running while another thread is inside the C scan.

    The main thread timestamps its own loop; the worker records when each scan
    ran.  With the GIL held through the C call, no main-thread timestamp could
    fall inside a scan.  Counting samples (not the largest gap) keeps the test
    valid on a loaded machine, where the main thread is descheduled at times.
    """
    size = 512 << 20
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    # Real zeroed pages: the shared zero page would scan from cache in a blink.
    for off in range(0, size, 64 << 20):
        buf[off : off + (64 << 20)] = bytes(64 << 20)

    done = threading.Event()
    scans: list[tuple[float, float]] = []

    def scan() -> None:
        for _ in range(3):
            t0 = time.perf_counter()
            zeroscan.scan_buffer(buf, 4096)
            scans.append((t0, time.perf_counter()))
        done.set()

    worker = threading.Thread(target=scan)
    samples: list[float] = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # so GIL hand-offs between Python threads stay short
    try:
        worker.start()
        while not done.is_set():
            samples.append(time.perf_counter())
        worker.join()
    finally:
        sys.setswitchinterval(interval)
        buf.close()
    inside = sum(1 for t in samples if any(a < t < b for a, b in scans))
    assert inside >= 10, (inside, scans)


def test_scan_fd_of_anonymous_memory(tmp_path: Path) -> None:
    data = os.urandom(4096) + bytes(8192) + os.urandom(100)
    path = tmp_path / "m"
    path.write_bytes(data)
    with path.open("rb") as f:
        bm = zeroscan.scan_fd(f.fileno(), 0, len(data), 4096)
    assert as_list(bm) == [False, True, True, False]
