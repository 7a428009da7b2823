"""Full and Diff ingest on real sparse files: holes, zero-fill, refusals, no loss on failure."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest

from wrennd.snapshot import IngestError, UnsupportedFilesystemError, open_snapshot
from wrennd.snapshot.chain import collapse, export, verify
from wrennd.snapshot.errors import ChainChangedError
from wrennd.snapshot.ingest import ingest_diff, ingest_full
from wrennd.snapshot.layout import header_path, link_path
from wrennd.snapshot.store import (
    collect_garbage,
    commit,
    generation_files,
    read_header,
    recover,
)

BS = 4096
PAGES = 32


def page(value: int) -> bytes:
    return bytes([value]) * BS


def is_hole(path: Path, index: int) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, index * BS, os.SEEK_DATA) >= (index + 1) * BS
    except OSError:  # ENXIO: no data after this offset
        return True
    finally:
        os.close(fd)


def full_memfile(path: Path, values: dict[int, int]) -> bytes:
    memory = bytearray(PAGES * BS)
    for p, v in values.items():
        memory[p * BS : (p + 1) * BS] = page(v)
    path.write_bytes(bytes(memory))
    return bytes(memory)


def diff_memfile(path: Path, values: dict[int, int], size: int = PAGES * BS) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        for p, v in values.items():
            os.pwrite(fd, page(v), p * BS)
    finally:
        os.close(fd)


def test_full_ingest_punches_zero_blocks_and_keeps_the_file(tmp_path: Path) -> None:
    store, mem = tmp_path / "store", tmp_path / "full.mem"
    memory = full_memfile(mem, {0: 1, 1: 2, 7: 3})
    inode = mem.stat().st_ino
    h = ingest_full(mem, tmp_path / "s", store)
    assert not mem.exists()
    gen = link_path(tmp_path / "s", h.generations[0])
    assert gen.stat().st_ino == inode  # the memfile itself, not a copy
    assert [is_hole(gen, p) for p in (0, 1, 2, 6, 7, 8)] == [False, False, True, True, False, True]
    assert [(e.offset // BS, e.length // BS, e.is_zero) for e in h.mapping] == [
        (0, 2, False),
        (2, 5, True),
        (7, 1, False),
        (8, PAGES - 8, True),
    ]
    export(tmp_path / "s", tmp_path / "out", store)
    assert (tmp_path / "out").read_bytes() == memory


def test_all_zero_memory_needs_no_generation(tmp_path: Path) -> None:
    mem = tmp_path / "full.mem"
    full_memfile(mem, {})
    h = ingest_full(mem, tmp_path / "s", tmp_path / "store")
    assert h.generations == ()
    assert generation_files(tmp_path / "store") == set()
    export(tmp_path / "s", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == bytes(PAGES * BS)


def test_diff_dirty_zero_page_maps_to_zero_not_parent(tmp_path: Path) -> None:
    store = tmp_path / "store"
    memory = bytearray(full_memfile(tmp_path / "full.mem", {3: 9, 4: 9, 5: 9}))
    ingest_full(tmp_path / "full.mem", tmp_path / "a", store)
    diff_memfile(tmp_path / "d.mem", {4: 0, 10: 7})  # page 4 zeroed, page 10 written
    h = ingest_diff(tmp_path / "d.mem", tmp_path / "a", tmp_path / "b", store)
    memory[4 * BS : 5 * BS] = bytes(BS)
    memory[10 * BS : 11 * BS] = page(7)
    assert h.generation == 1 and len(h.generations) == 2
    assert h.mapping[h.mapping.lookup(4 * BS)].is_zero
    assert not is_hole(link_path(tmp_path / "b", h.build_id), 4)  # not punched: unused
    export(tmp_path / "b", tmp_path / "out", store)
    assert (tmp_path / "out").read_bytes() == bytes(memory)


def test_diff_that_covers_a_generation_drops_it(tmp_path: Path) -> None:
    store = tmp_path / "store"
    full_memfile(tmp_path / "full.mem", {1: 1})
    ingest_full(tmp_path / "full.mem", tmp_path / "a", store)
    diff_memfile(tmp_path / "d.mem", {1: 2})
    h = ingest_diff(tmp_path / "d.mem", tmp_path / "a", tmp_path / "a", store)
    assert h.generations == (h.build_id,)  # in place: the Full generation is garbage now
    assert generation_files(store) == {h.build_id}
    diff_memfile(tmp_path / "e.mem", {})  # nothing dirty: no new file is kept
    h2 = ingest_diff(tmp_path / "e.mem", tmp_path / "a", tmp_path / "a", store)
    assert h2.generations == h.generations and h2.generation == 2
    assert not (tmp_path / "e.mem").exists()


def test_diff_refuses_misaligned_extents_and_keeps_everything(tmp_path: Path) -> None:
    store = tmp_path / "store"
    full_memfile(tmp_path / "full.mem", {0: 1})
    ingest_full(tmp_path / "full.mem", tmp_path / "a", store, block_size=2 * BS)
    before = header_path(tmp_path / "a").read_bytes()
    diff_memfile(tmp_path / "d.mem", {3: 5})  # one 4 KiB page: half an 8 KiB block
    with pytest.raises(IngestError, match=r"offset 0x3000 is not a multiple of the block size"):
        ingest_diff(tmp_path / "d.mem", tmp_path / "a", tmp_path / "b", store)
    assert (tmp_path / "d.mem").exists()
    assert header_path(tmp_path / "a").read_bytes() == before
    assert not header_path(tmp_path / "b").exists()


def test_diff_refuses_allocation_unit_larger_than_block(tmp_path: Path) -> None:
    """ext4/tmpfs allocate 4 KiB units: holes cannot describe 512-byte blocks."""
    store = tmp_path / "store"
    full_memfile(tmp_path / "full.mem", {0: 1})
    ingest_full(tmp_path / "full.mem", tmp_path / "a", store, block_size=512)
    diff_memfile(tmp_path / "d.mem", {1: 1})
    # The precondition of this test, not a feature to skip on: tmpfs/ext4 use 4 KiB.
    assert (tmp_path / "d.mem").stat().st_blksize > 512
    with pytest.raises(UnsupportedFilesystemError, match="allocates in units of"):
        ingest_diff(tmp_path / "d.mem", tmp_path / "a", tmp_path / "b", store)


def test_diff_refuses_wrong_size(tmp_path: Path) -> None:
    store = tmp_path / "store"
    full_memfile(tmp_path / "full.mem", {0: 1})
    ingest_full(tmp_path / "full.mem", tmp_path / "a", store)
    diff_memfile(tmp_path / "d.mem", {}, size=(PAGES + 1) * BS)
    with pytest.raises(IngestError, match="larger than the parent's memory"):
        ingest_diff(tmp_path / "d.mem", tmp_path / "a", tmp_path / "b", store)
    (tmp_path / "f.mem").write_bytes(b"x" * (BS + 1))
    with pytest.raises(IngestError, match="not a positive multiple"):
        ingest_full(tmp_path / "f.mem", tmp_path / "c", store)
    assert (tmp_path / "f.mem").exists()


def test_full_ingest_across_filesystems_copies_sparsely(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test directory")
    mem = shm / f"wr-ingest-{os.getpid()}.mem"
    try:
        memory = full_memfile(mem, {2: 4, 9: 8})
        h = ingest_full(mem, tmp_path / "s", tmp_path / "store")
        assert not mem.exists()
        gen = link_path(tmp_path / "s", h.generations[0])
        assert is_hole(gen, 0) and not is_hole(gen, 2)
        export(tmp_path / "s", tmp_path / "out", tmp_path / "store")
        assert (tmp_path / "out").read_bytes() == memory
    finally:
        mem.unlink(missing_ok=True)


def test_collapse_does_not_replace_a_newer_header(tmp_path: Path) -> None:
    store = tmp_path / "store"
    full_memfile(tmp_path / "full.mem", {0: 1})
    ingest_full(tmp_path / "full.mem", tmp_path / "a", store)
    diff_memfile(tmp_path / "d.mem", {1: 2})
    ingest_diff(tmp_path / "d.mem", tmp_path / "a", tmp_path / "a", store)
    stale = header_path(tmp_path / "a").read_bytes()
    diff_memfile(tmp_path / "e.mem", {2: 3})
    newer = ingest_diff(tmp_path / "e.mem", tmp_path / "a", tmp_path / "a", store)
    before = set(generation_files(store))
    with pytest.raises(ChainChangedError):
        commit(tmp_path / "a", store, newer, expect=stale)
    assert read_header(tmp_path / "a") == newer
    assert generation_files(store) == before
    collapsed = collapse(tmp_path / "a", store)
    assert generation_files(store) == set(collapsed.generations)
    assert open_snapshot(tmp_path / "a", store).generation == 0


def test_recover_removes_what_a_crash_left(tmp_path: Path) -> None:
    store = tmp_path / "store"
    full_memfile(tmp_path / "full.mem", {0: 1})
    h = ingest_full(tmp_path / "full.mem", tmp_path / "a", store)
    # a crash after linking a new generation but before the header rename
    (store / "1b4e28ba-2fa1-11d2-883f-0016d3cca427").write_bytes(page(3))
    extra = tmp_path / "a" / "memfiles" / "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    extra.hardlink_to(store / "1b4e28ba-2fa1-11d2-883f-0016d3cca427")
    # a crash before a new snapshot's first header
    (tmp_path / "b" / "memfiles").mkdir(parents=True)
    full_memfile(tmp_path / "b" / "memfiles" / "x", {1: 1})
    (tmp_path / "a" / ".tmp-memory.header-dead").write_bytes(b"partial")
    removed = recover([tmp_path / "a", tmp_path / "b"], store)
    assert [str(r) for r in removed] == ["1b4e28ba-2fa1-11d2-883f-0016d3cca427"]
    assert generation_files(store) == set(h.generations)
    assert not extra.exists() and not (tmp_path / "a" / ".tmp-memory.header-dead").exists()
    assert not (tmp_path / "b" / "memfiles").exists()


def test_memfile_with_other_links_is_refused(tmp_path: Path) -> None:
    full_memfile(tmp_path / "full.mem", {0: 1})
    (tmp_path / "other").hardlink_to(tmp_path / "full.mem")
    with pytest.raises(IngestError, match="no other hard links"):
        ingest_full(tmp_path / "full.mem", tmp_path / "s", tmp_path / "store")
    assert (tmp_path / "full.mem").exists()


def test_concurrent_collapse_and_diff_ingest_lose_nothing(tmp_path: Path) -> None:
    """A pause landing while a background collapse runs: either order must keep the diff."""
    store, sdir = tmp_path / "store", tmp_path / "s"
    memory = bytearray(full_memfile(tmp_path / "full.mem", dict.fromkeys(range(0, PAGES, 2), 1)))
    ingest_full(tmp_path / "full.mem", sdir, store)
    for round_ in range(12):
        pages = {(round_ * 5 + k) % PAGES: round_ + 2 for k in range(3)}
        diff_memfile(tmp_path / "d.mem", pages)
        for p, v in pages.items():
            memory[p * BS : (p + 1) * BS] = page(v)
        outcome: list[str] = []

        def collapse_quietly(outcome: list[str]) -> None:
            try:
                collapse(sdir, store)
                outcome.append("collapsed")
            except ChainChangedError:
                outcome.append("collapse yielded")

        worker = threading.Thread(target=collapse_quietly, args=(outcome,))
        worker.start()
        ingest_diff(tmp_path / "d.mem", sdir, sdir, store)
        worker.join()
        assert len(outcome) == 1
        assert verify(sdir, store) == []
        export(sdir, tmp_path / "out", store)
        assert (tmp_path / "out").read_bytes() == bytes(memory), outcome
        assert generation_files(store) == set(read_header(sdir).generations)


def test_commits_check_only_what_they_unlink(tmp_path: Path) -> None:
    """A pause must not cost a walk of the whole store; recovery does that."""
    store = tmp_path / "store"
    store.mkdir()
    orphan = store / "00000000-0000-0000-0000-00000000abcd"
    orphan.write_bytes(page(1))
    full_memfile(tmp_path / "full.mem", {1: 1})
    ingest_full(tmp_path / "full.mem", tmp_path / "a", store)
    diff_memfile(tmp_path / "d.mem", {1: 2})
    h = ingest_diff(tmp_path / "d.mem", tmp_path / "a", tmp_path / "a", store)
    assert orphan.exists()
    assert generation_files(store) == {*h.generations, uuid.UUID(orphan.name)}
    assert collect_garbage(store) == [uuid.UUID(orphan.name)]
    assert generation_files(store) == set(h.generations)
