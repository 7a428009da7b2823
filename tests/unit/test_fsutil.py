from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from wrennd import fsutil


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    fsutil.atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        fsutil.atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_mode_is_applied(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    old = os.umask(0)
    try:
        fsutil.atomic_write_bytes(target, b"x", mode=0o600)
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o600
