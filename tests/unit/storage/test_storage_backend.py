"""The shared bookkeeping of every backend, through the copy backend on a plain directory."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from wrennd import durable
from wrennd.storage import (
    BadBaseImage,
    BadSandboxId,
    BaseImageInUse,
    BaseImageMissing,
    CopyBackend,
    RecordCorrupt,
    RootfsRecord,
    SandboxStorageBusy,
    SandboxStorageNotFound,
)
from wrennd.storage.backend import check_base_image


@pytest.fixture
def backend(tmp_path: Path) -> CopyBackend:
    return CopyBackend(tmp_path / "state")


@pytest.fixture
def base(tmp_path: Path) -> Path:
    p = tmp_path / "state" / "images" / "base.ext4"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"\x5a" * 65536)
    return p


@pytest.mark.parametrize("bad", ["", "a/b", "..", "x" * 65, "sp ace", "dot.ted"])
def test_bad_sandbox_ids(backend: CopyBackend, base: Path, bad: str) -> None:
    with pytest.raises(BadSandboxId, match="expected 1-64 characters"):
        backend.create(bad, base)


def test_base_image_checks(tmp_path: Path) -> None:
    with pytest.raises(BaseImageMissing, match=r"nope\.ext4 does not exist"):
        check_base_image(tmp_path / "nope.ext4")
    with pytest.raises(BaseImageMissing, match="not a regular file"):
        check_base_image(tmp_path)
    odd = tmp_path / "odd.img"
    odd.write_bytes(b"x" * 1000)
    with pytest.raises(BadBaseImage, match="size 1000 is not a positive multiple of 512"):
        check_base_image(odd)
    empty = tmp_path / "empty.img"
    empty.touch()
    with pytest.raises(BadBaseImage):
        check_base_image(empty)
    link = tmp_path / "link.img"
    link.symlink_to(odd.with_name("target.img"))
    with pytest.raises(BaseImageMissing):
        check_base_image(link)


def test_record_is_persisted_and_round_trips(backend: CopyBackend, base: Path) -> None:
    rec = backend.create("r1", base)
    on_disk = json.loads(backend.record_path("r1").read_text())
    assert on_disk["backend"] == "copy" and on_disk["base_image"] == str(base.resolve())
    assert RootfsRecord.from_json(rec.to_json(), backend.record_path("r1")) == rec
    assert backend.record("r1") == rec
    assert [r.sandbox_id for r in backend.records()] == ["r1"]


def test_corrupt_record(backend: CopyBackend, base: Path) -> None:
    backend.create("r2", base)
    backend.record_path("r2").write_text("{not json")
    with pytest.raises(RecordCorrupt, match=r"r2/rootfs\.json is unreadable"):
        backend.record("r2")
    assert list(backend.records()) == []


def test_unknown_sandbox(backend: CopyBackend) -> None:
    for op in (backend.detach, backend.attach, backend.remove, backend.record):
        with pytest.raises(SandboxStorageNotFound, match="ghost"):
            op("ghost")


def test_existing_sandbox_dir_is_kept_on_failure(backend: CopyBackend, tmp_path: Path) -> None:
    sdir = backend.sandbox_dir("keep")
    sdir.mkdir()
    (sdir / "state.json").write_text("{}")  # the sandbox manager's file
    with pytest.raises(BaseImageMissing):
        backend.create("keep", tmp_path / "missing.ext4")
    assert sorted(p.name for p in sdir.iterdir()) == ["state.json"]


def test_one_operation_per_sandbox_at_a_time(backend: CopyBackend, base: Path) -> None:
    backend.create("busy", base)
    entered, release = threading.Event(), threading.Event()
    real = backend._detach

    def slow_detach(rec: RootfsRecord) -> None:
        entered.set()
        release.wait(10)
        real(rec)

    backend._detach = slow_detach  # type: ignore[method-assign]
    t = threading.Thread(target=backend.detach, args=("busy",))
    t.start()
    assert entered.wait(10)
    try:
        with pytest.raises(SandboxStorageBusy, match="busy"):
            backend.remove("busy")
    finally:
        release.set()
        t.join()
    assert not backend.record("busy").attached


def test_base_in_use_counts_creates_in_flight(backend: CopyBackend, base: Path) -> None:
    entered, release = threading.Event(), threading.Event()
    real = backend._clone

    def slow_clone(src: int, dst: int) -> None:
        entered.set()
        release.wait(10)
        real(src, dst)

    backend._clone = slow_clone  # type: ignore[method-assign]
    t = threading.Thread(target=backend.create, args=("inflight", base))
    t.start()
    assert entered.wait(10)
    try:
        with pytest.raises(BaseImageInUse, match="inflight"):
            backend.delete_base(base)
    finally:
        release.set()
        t.join()
    assert backend.users_of(base) == ["inflight"]


def test_cleanup_stale_of_file_backends(backend: CopyBackend, base: Path) -> None:
    backend.create("up", base)
    backend.create("was-up", base)
    crumbs = [
        durable.temp_name(backend.sandbox_dir("up") / "rootfs.ext4"),
        durable.temp_name(base.parent / "template.ext4"),
    ]
    for c in crumbs:
        c.write_bytes(b"half")
    keep = base.parent / "notes.tmp"
    keep.write_text("not ours")
    report = backend.cleanup_stale(["up"])
    assert sorted(report.temp_files) == sorted(map(str, crumbs))
    assert report.marked_detached == ["was-up"]
    assert not any(c.exists() for c in crumbs) and keep.exists()
    assert backend.record("up").attached and not backend.record("was-up").attached


def test_leftover_layer_of_a_crashed_create_is_replaced(backend: CopyBackend, base: Path) -> None:
    sdir = backend.sandbox_dir("crashed")
    sdir.mkdir()
    (sdir / "rootfs.ext4").write_bytes(b"half a copy")
    rec = backend.create("crashed", base)
    assert rec.layer.read_bytes() == base.read_bytes()
