"""State modes: private whatever the umask; loose ones reported, and tightened on request."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from wrennd import durable, permissions


def test_made_private_under_umask_000(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        state = tmp_path / "state"
        permissions.make_state_dir(state)
        durable.atomic_write_json(state / "state.json", {"x": 1})
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        assert stat.S_IMODE((state / "state.json").stat().st_mode) == 0o600
        permissions.private_umask()
        (state / "sub").mkdir()
        (state / "sub" / "file").write_bytes(b"x")  # as a VMM child would create it
        assert permissions.loose(state) == []
    finally:
        os.umask(old)


def test_loose_modes_are_reported_and_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    (state / "sandboxes").mkdir(parents=True)
    state.chmod(0o755)
    (state / "sandboxes").chmod(0o755)
    layer = state / "sandboxes" / "rootfs.cow"
    layer.write_bytes(b"secret")
    layer.chmod(0o644)
    (state / "link").symlink_to(layer)
    with caplog.at_level(logging.WARNING):
        assert permissions.check(state, fix=False) == 3
    assert "--fix-permissions" in caplog.text
    assert stat.S_IMODE(layer.stat().st_mode) == 0o644, "not fixed unless asked"
    assert permissions.check(state, fix=True) == 3
    assert stat.S_IMODE(layer.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert permissions.loose(state) == []
