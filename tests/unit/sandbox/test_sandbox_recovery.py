"""Startup recovery's decisions, on real files and real processes (no VMM needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wrennd.sandbox import templates
from wrennd.sandbox.environment import SandboxPaths
from wrennd.sandbox.record import RecordStore, SandboxRecord, new_sandbox_id
from wrennd.sandbox.record import SandboxState as S
from wrennd.sandbox.recovery import _settle, finish_interrupted_pause, stop_stale_vmm
from wrennd.sandbox.templates import check_clone as _check_clone
from wrennd.sandbox.usage import allocated, exclusive_bytes
from wrennd.snapshot import ingest_full

MIB = 1 << 20


def record(state: S, generation: int | None = None) -> SandboxRecord:
    rec = SandboxRecord(new_sandbox_id(), state, 1, 64, generation=generation, slot=4, vmm_pid=9)
    return rec


@pytest.mark.parametrize("state", [S.RUNNING, S.PAUSING, S.RESUMING])
def test_a_lost_vmm_goes_back_to_the_snapshot_or_to_error(state: S) -> None:
    had = record(state, generation=2)
    _settle(had)
    assert had.state == S.PAUSED and "generation 2" in str(had.error)
    assert (had.slot, had.vmm_pid) == (None, None)
    never = record(state)
    _settle(never)
    assert never.state == S.ERROR and "no snapshot" in str(never.error)


def test_resting_and_unfinished_states() -> None:
    paused = record(S.PAUSED, generation=0)
    assert _settle(paused) is None and paused.state == S.PAUSED and paused.error is None
    for state in (S.CREATING, S.STOPPING):
        rec = record(state)
        assert _settle(rec) is None and rec.state == state, "finished as a destroy"


def _snapshot(paths: SandboxPaths, store: Path) -> str:
    paths.state.mkdir(parents=True)
    memfile = paths.state / "mem"
    memfile.write_bytes(os.urandom(MIB))
    return str(ingest_full(memfile, paths.snapshot_dir, store).build_id)


def test_interrupted_pause_whose_memory_committed_is_completed(tmp_path: Path) -> None:
    paths = SandboxPaths.of(tmp_path / "state", tmp_path / "run", new_sandbox_id())
    build_id = _snapshot(paths, tmp_path / "store")
    paths.pending_vmstate.write_bytes(b"vmstate of that pause")
    rec = record(S.PAUSING)
    rec.need_full = True
    assert finish_interrupted_pause(paths, rec)
    assert paths.vmstate.read_bytes() == b"vmstate of that pause"
    assert (rec.generation, rec.snapshot_build_id, rec.need_full) == (0, build_id, False)
    assert not paths.pending_vmstate.exists()


def test_interrupted_pause_after_its_vmstate_was_published_is_completed(
    tmp_path: Path,
) -> None:
    """Killed while releasing: header committed and vmstate already in place."""
    paths = SandboxPaths.of(tmp_path / "state", tmp_path / "run", new_sandbox_id())
    build_id = _snapshot(paths, tmp_path / "store")
    paths.vmstate.write_bytes(b"vmstate of that pause")
    rec = record(S.PAUSING)
    assert finish_interrupted_pause(paths, rec)
    assert (rec.generation, rec.snapshot_build_id) == (0, build_id)
    assert paths.vmstate.read_bytes() == b"vmstate of that pause"


def test_interrupted_pause_before_its_commit_is_dropped(tmp_path: Path) -> None:
    paths = SandboxPaths.of(tmp_path / "state", tmp_path / "run", new_sandbox_id())
    build_id = _snapshot(paths, tmp_path / "store")
    paths.vmstate.write_bytes(b"the last pause's")
    paths.pending_vmstate.write_bytes(b"never committed")
    paths.pending_memfile.write_bytes(b"x" * 4096)
    rec = record(S.PAUSING, generation=0)
    rec.snapshot_build_id = build_id
    assert not finish_interrupted_pause(paths, rec)
    assert paths.vmstate.read_bytes() == b"the last pause's"
    assert not paths.pending_vmstate.exists() and not paths.pending_memfile.exists()


def test_stale_vmm_is_stopped_only_when_its_socket_is_on_its_command_line(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "api.sock"
    code = "import signal, time; time.sleep(60)"
    ours = subprocess.Popen([sys.executable, "-c", code, "--api-sock", str(sock)])
    other = subprocess.Popen([sys.executable, "-c", code])
    try:
        assert not stop_stale_vmm(other.pid, sock), "a pid alone is never trusted"
        assert other.poll() is None
        assert stop_stale_vmm(ours.pid, sock)
        assert ours.wait(5) != 0
        assert not stop_stale_vmm(ours.pid, sock), "already gone"
    finally:
        for p in (ours, other):
            p.kill()
            p.wait()


def test_record_written_before_these_fields_still_loads(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    rec = record(S.PAUSED, generation=1)
    store.save(rec)
    path = tmp_path / rec.id / "state.json"
    doc = json.loads(path.read_bytes())
    del doc["need_full"], doc["snapshot_build_id"]
    path.write_text(json.dumps(doc))
    again = store.load(rec.id)
    assert again.need_full is False and again.snapshot_build_id is None


def test_a_clone_cannot_change_the_machine() -> None:
    meta = templates.new_meta("t", 2, 256, "base", "sb-000000000001")
    _check_clone(meta, None, None)
    _check_clone(meta, 2, 256)
    with pytest.raises(templates.TemplateMismatch, match="vcpus=2"):
        _check_clone(meta, 1, None)
    with pytest.raises(templates.TemplateMismatch, match="memory_mib=256"):
        _check_clone(meta, None, 128)
    with pytest.raises(templates.TemplateNotFound):
        templates.check_name("../etc")


def test_usage_of_unshared_and_sparse_files(tmp_path: Path) -> None:
    f = tmp_path / "data"
    with f.open("wb") as out:
        out.write(os.urandom(MIB))
        out.flush()
        os.fsync(out.fileno())
    assert exclusive_bytes(f) == allocated(f) >= MIB
    sparse = tmp_path / "sparse"
    with sparse.open("wb") as out:
        out.truncate(1 << 30)
    assert allocated(sparse) == 0 == exclusive_bytes(sparse)


def test_a_template_links_the_memory_it_names(tmp_path: Path) -> None:
    paths = SandboxPaths.of(tmp_path / "state", tmp_path / "run", new_sandbox_id())
    store = tmp_path / "store"
    build_id = _snapshot(paths, store)
    paths.vmstate.write_bytes(b"vmstate")
    dst = tmp_path / "template" / "snapshot"
    header = templates.copy_snapshot(paths.snapshot_dir, dst, store)
    assert str(header.build_id) == build_id
    assert (dst / "vmstate").read_bytes() == b"vmstate"
    (linked,) = (dst / "memfiles").iterdir()
    assert linked.stat().st_ino == (store / build_id).stat().st_ino, "a link, not a copy"
    assert (store / build_id).stat().st_nlink == 3  # store, sandbox, template
