from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

from wrennd import durable


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    durable.atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        durable.atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_mode_is_applied(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    old = os.umask(0)
    try:
        durable.atomic_write(target, b"x", mode=0o600)
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o600


def test_mode_holds_under_a_restrictive_umask(tmp_path: Path) -> None:
    target = tmp_path / "shared"
    old = os.umask(0o077)
    try:
        durable.atomic_write(target, b"x", mode=0o644)
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_publish_no_replace_refuses_an_existing_name(tmp_path: Path, kind: str) -> None:
    def make(p: Path, text: str) -> None:
        if kind == "dir":
            p.mkdir()
            (p / "f").write_text(text)
        else:
            p.write_text(text)

    final, tmp = tmp_path / "final", durable.temp_name(tmp_path / "final")
    make(tmp, "new")
    durable.publish_no_replace(tmp, final)
    assert not tmp.exists()
    again = durable.temp_name(final)
    make(again, "newer")
    with pytest.raises(FileExistsError):
        durable.publish_no_replace(again, final)
    body = final / "f" if kind == "dir" else final
    assert body.read_text() == "new"
    if kind == "file":
        # Even an empty directory or file at the final name is never replaced.
        (tmp_path / "empty").mkdir()
        with pytest.raises(FileExistsError):
            durable.publish_no_replace(again, tmp_path / "empty")


def test_replace_dir_swaps_whole_directories(tmp_path: Path) -> None:
    final = tmp_path / "snap"
    final.mkdir()
    (final / "old-only").write_text("old")
    new = durable.temp_name(final)
    new.mkdir()
    (new / "new-only").write_text("new")
    durable.replace_dir(new, final)
    assert sorted(os.listdir(final)) == ["new-only"]
    assert os.listdir(tmp_path) == ["snap"]  # the old directory is gone too


def test_replace_dir_to_a_fresh_name(tmp_path: Path) -> None:
    new = tmp_path / "made"
    new.mkdir()
    durable.replace_dir(new, tmp_path / "final")
    assert os.listdir(tmp_path) == ["final"]


def test_move_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "sub").mkdir()
    durable.move(tmp_path / "a", tmp_path / "sub" / "b")
    assert (tmp_path / "sub" / "b").read_text() == "a"
    (tmp_path / "c").write_text("c")
    with pytest.raises(FileExistsError):
        durable.move(tmp_path / "c", tmp_path / "sub" / "b")
    assert (tmp_path / "sub" / "b").read_text() == "a"


def test_stale_temps_go_live_writers_stay(tmp_path: Path) -> None:
    stale = durable.temp_name(tmp_path / "x")
    stale.write_text("left by a crash")
    keep = tmp_path / "x"
    keep.write_text("real")
    with durable.staged(tmp_path / "y") as live:
        removed = durable.remove_stale_temps(tmp_path)
        assert removed == [stale]
        assert live.tmp.exists()
        live.publish()
    assert sorted(os.listdir(tmp_path)) == ["x", "y"]


def test_an_unpublished_stage_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), durable.staged(tmp_path / "z") as st:
        os.write(st.fd, b"half")
        raise RuntimeError("writer failed")
    assert os.listdir(tmp_path) == []


REPO = Path(__file__).resolve().parents[2]


def _renames(tree: ast.AST) -> list[int]:
    """Lines that call os.rename/os.replace/os.renames, or Path.rename/Path.replace
    (one positional argument: str.replace takes two, dataclasses.replace keywords)."""
    lines = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        attr, owner = node.func.attr, node.func.value
        if attr not in ("rename", "replace", "renames"):
            continue
        if (isinstance(owner, ast.Name) and owner.id == "os") or (
            len(node.args) == 1 and not node.keywords
        ):
            lines.append(node.lineno)
    return lines


def test_the_rename_finder_finds_renames() -> None:
    code = "os.rename(a, b)\np.replace(q)\ns.replace('a', 'b')\ndataclasses.replace(r, x=1)\n"
    assert _renames(ast.parse(code)) == [1, 2]


def test_every_rename_into_place_goes_through_durable() -> None:
    """One durability module: no other module of the daemon (nor the guest agent,
    which carries it) renames a file by itself."""
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for path in sorted((REPO / "wrennd").rglob("*.py"))
        if path.name != "durable.py"
        for n in _renames(ast.parse(path.read_text()))
    ]
    assert offenders == []
