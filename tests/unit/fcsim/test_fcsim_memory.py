"""Guest memory, dirty tracking and memory-file semantics, on real mappings and files."""

from __future__ import annotations

from pathlib import Path

import pytest

from wrennd_sim.fcsim.machine import ApiFault, Machine
from wrennd_sim.fcsim.memory import PAGE_SIZE, GuestMemory, GuestMemoryError
from wrennd_sim.fcsim.snapshot import (
    SnapshotFileError,
    read_vmstate,
    write_memory,
    write_vmstate,
)
from wrennd_sim.fcsim.spec import api_spec, load_document
from wrennd_sim.fcsim.vmmlog import VmmLog


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def test_dirty_runs_and_clear() -> None:
    mem = GuestMemory.anonymous(4)
    try:
        mem.write(0, b"a")
        mem.write(PAGE_SIZE * 3 - 1, b"bc")  # straddles pages 2 and 3
        mem.write(PAGE_SIZE * 10, b"\0")  # a page dirtied to zero is still dirty
        assert list(mem.dirty_runs()) == [
            (0, PAGE_SIZE),
            (2 * PAGE_SIZE, 2 * PAGE_SIZE),
            (10 * PAGE_SIZE, PAGE_SIZE),
        ]
        mem.clear_dirty()
        assert list(mem.dirty_runs()) == [] and mem.dirty_count() == 0
        with pytest.raises(GuestMemoryError, match="outside"):
            mem.write(mem.size - 1, b"xy")
    finally:
        mem.close()
    with pytest.raises(GuestMemoryError, match="unmapped"):
        mem.read(0, 1)


def test_full_then_diff_into_the_same_file(tmp_path: Path) -> None:
    mem = GuestMemory.anonymous(4)
    path = tmp_path / "mem"
    try:
        mem.write(5 * PAGE_SIZE, b"first")
        assert write_memory(mem, path, diff=False) == mem.size
        assert path.stat().st_size == mem.size
        mem.write(7 * PAGE_SIZE, b"second")
        assert write_memory(mem, path, diff=True) == PAGE_SIZE
        data = path.read_bytes()
        assert data[5 * PAGE_SIZE : 5 * PAGE_SIZE + 5] == b"first"  # merged, not truncated
        assert data[7 * PAGE_SIZE : 7 * PAGE_SIZE + 6] == b"second"
        assert data == mem.read(0, mem.size)
    finally:
        mem.close()


def test_diff_into_a_new_file_is_sparse(tmp_path: Path) -> None:
    mem = GuestMemory.anonymous(8)
    path = tmp_path / "diff"
    path.write_bytes(b"a file of the wrong size is truncated first")
    try:
        mem.write(100 * PAGE_SIZE, b"x" * PAGE_SIZE)
        write_memory(mem, path, diff=True)
        assert path.stat().st_size == mem.size
        assert allocated(path) <= 4 * PAGE_SIZE
        assert path.read_bytes()[:10] == bytes(10)
    finally:
        mem.close()


def test_file_backend_is_private(tmp_path: Path) -> None:
    path = tmp_path / "mem"
    path.write_bytes(b"\1" * (2 << 20))
    mem = GuestMemory.from_file(path, 2 << 20, PAGE_SIZE)
    try:
        mem.write(0, b"\2")
        assert mem.read(0, 2) == b"\2\1"
        assert path.read_bytes()[:1] == b"\1", "MAP_PRIVATE must not write through"
    finally:
        mem.close()
    with pytest.raises(GuestMemoryError, match="snapshot says"):
        GuestMemory.from_file(path, 4 << 20, PAGE_SIZE)


def test_vmstate_roundtrip_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "vmstate"
    write_vmstate(path, {"mem_size": 1, "page_size": 4096, "machine_config": {}})
    assert read_vmstate(path)["mem_size"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["vmstate"]
    path.write_text("{}")
    with pytest.raises(SnapshotFileError, match="not an fcsim snapshot"):
        read_vmstate(path)
    path.write_bytes(b"\x00binary firecracker state")
    with pytest.raises(SnapshotFileError, match="not an fcsim snapshot"):
        read_vmstate(path)


def test_spec_is_read_as_yaml_1_2() -> None:
    doc = load_document()
    assert doc["info"]["license"]["name"] == "Apache 2.0"
    assert "Off" in doc["definitions"]["Logger"]["properties"]["level"]["enum"]
    assert doc["definitions"]["CpuTemplate"]["enum"][-1] == "None"
    assert api_spec().version == "1.16.1"


async def test_a_hugetlb_snapshot_is_refused_by_the_file_backend(tmp_path: Path) -> None:
    """Firecracker restores a guest of 2 MiB pages only through UFFD."""
    state = {"mem_size": 4 << 20, "page_size": 2 << 20, "machine_config": {"huge_pages": "2M"}}
    write_vmstate(tmp_path / "vmstate", state)
    (tmp_path / "mem").write_bytes(bytes(4 << 20))
    machine = Machine("vm", VmmLog("vm"))
    load = {"snapshot_path": str(tmp_path / "vmstate"), "mem_file_path": str(tmp_path / "mem")}
    with pytest.raises(ApiFault, match=r"hugetlbfs backed snapshot .* Please use uffd"):
        await machine.load_snapshot(load)
    assert machine.memory is None and machine.unusable is not None
