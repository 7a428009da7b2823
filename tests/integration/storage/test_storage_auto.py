"""``auto`` on real filesystems: reflink where FICLONE works, copy where it does not."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from wrennd import features
from wrennd.storage import BackendUnavailable, ReflinkBackend, choose_backend

pytestmark = pytest.mark.root


@pytest.mark.parametrize(
    ("fstype", "expected"), [("btrfs", "reflink"), ("xfs", "reflink"), ("ext4", "copy")]
)
def test_auto_choice(
    make_fs: Any, fstype: str, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    if features.device_mapper().available:
        expected = "devicemapper"
    caplog.set_level(logging.INFO, logger="wrennd.storage")
    state = make_fs(fstype, 64) / "state"
    assert choose_backend("auto", state).name == expected
    [rec] = [r for r in caplog.records if r.getMessage() == "storage backend"]
    fields = rec.kv  # type: ignore[attr-defined]
    assert fields["backend"] == expected
    if expected != "devicemapper":
        assert "/dev/mapper/control" in fields["not_devicemapper"]
    if expected == "copy":
        assert "does not support reflinks" in fields["not_reflink"]


def test_reflink_across_filesystems_is_a_clear_error(make_fs: Any, tmp_path: Path) -> None:
    state = make_fs("btrfs", 128) / "state"
    base = tmp_path / "base.img"  # on the host's own filesystem
    base.write_bytes(b"\x01" * 65536)
    backend = ReflinkBackend(state)
    with pytest.raises(BackendUnavailable, match="different filesystems"):
        backend.create("x1", base)
    assert not backend.sandbox_dir("x1").exists()
    with pytest.raises(BackendUnavailable, match=r"different filesystems|not support"):
        choose_backend("reflink", tmp_path / "plain")
