from __future__ import annotations

import json
from pathlib import Path

import pytest

from wrennd.sandbox.errors import WrongState
from wrennd.sandbox.record import (
    RecordError,
    RecordStore,
    SandboxRecord,
    SandboxState,
    check_sandbox_id,
    check_transition,
    new_sandbox_id,
)


def make(store: RecordStore, **kw: object) -> SandboxRecord:
    rec = SandboxRecord(id=new_sandbox_id(), state=SandboxState.RUNNING, vcpus=1, memory_mib=128)
    for k, v in kw.items():
        setattr(rec, k, v)
    store.save(rec)
    return rec


def test_round_trip(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    rec = make(store, env={"A": "1"}, metadata={"owner": "me"}, slot=3, image="base")
    again = store.load(rec.id)
    assert again == rec
    assert again.state is SandboxState.RUNNING


def test_load_all_reports_bad_records_without_dropping_good_ones(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    good = make(store)
    bad_id = new_sandbox_id()
    (tmp_path / bad_id).mkdir()
    (tmp_path / bad_id / "state.json").write_text("{not json")
    wrong = make(store)
    doc = json.loads((tmp_path / wrong.id / "state.json").read_text())
    doc["state"] = "flying"
    (tmp_path / wrong.id / "state.json").write_text(json.dumps(doc))
    (tmp_path / "not-a-sandbox").mkdir()
    records, errors = store.load_all()
    assert [r.id for r in records] == [good.id]
    assert len(errors) == 2
    assert any(bad_id in str(e) for e in errors)
    assert any("flying" in str(e) for e in errors)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 99}, "unsupported record version"),
        ({"surprise": 1}, "unknown fields"),
        ({"id": "../../etc"}, "invalid sandbox id"),
    ],
)
def test_malformed_records_are_refused(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    store = RecordStore(tmp_path)
    rec = make(store)
    path = tmp_path / rec.id / "state.json"
    doc = json.loads(path.read_text())
    doc.update(change)
    path.write_text(json.dumps(doc))
    with pytest.raises(RecordError, match=message):
        store.load(rec.id)


def test_ids_cannot_escape_the_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        check_sandbox_id("../x")
    with pytest.raises(ValueError):
        RecordStore(tmp_path).dir("sb-../../../../x")


def test_remove(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    rec = make(store)
    (store.dir(rec.id) / "rootfs.cow").write_bytes(b"x")
    store.remove(rec.id)
    assert store.load_all() == ([], [])


def test_transitions() -> None:
    check_transition("sb-1", SandboxState.RUNNING, SandboxState.PAUSING, "pause")
    with pytest.raises(WrongState, match="is paused: cannot exec") as e:
        check_transition("sb-1", SandboxState.PAUSED, SandboxState.RUNNING, "exec")
    assert e.value.state is SandboxState.PAUSED
    assert SandboxState.PAUSING.in_progress
    assert not SandboxState.PAUSED.in_progress
