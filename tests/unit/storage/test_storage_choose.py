"""Backend selection on this machine's own filesystem."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from wrennd import features
from wrennd.storage import BackendUnavailable, choose_backend
from wrennd.storage.choose import probe_copy, probe_devicemapper, probe_reflink


def test_devicemapper_probe_builds_on_the_feature_probe(tmp_path: Path) -> None:
    # The backend's probe never accepts what the shared feature probe refuses.
    probe = probe_devicemapper(tmp_path)
    assert not probe.ok or features.device_mapper().available, probe


@pytest.mark.skipif(
    features.device_mapper().available, reason="kernel has device-mapper: nothing to refuse"
)
def test_devicemapper_is_refused_with_the_feature_probes_reason(tmp_path: Path) -> None:
    probe = probe_devicemapper(tmp_path)
    assert not probe.ok and probe.reason == features.device_mapper().reason
    with pytest.raises(BackendUnavailable, match="/dev/mapper/control"):
        choose_backend("devicemapper", tmp_path)


def test_copy_always_works(tmp_path: Path) -> None:
    assert probe_copy(tmp_path).ok
    assert choose_backend("copy", tmp_path).name == "copy"
    assert [p.name for p in (tmp_path / "sandboxes").iterdir()] == []


def test_auto_logs_its_choice_and_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wrennd.storage")
    backend = choose_backend("auto", tmp_path)
    expected = "devicemapper" if probe_devicemapper(tmp_path).ok else None
    expected = expected or ("reflink" if probe_reflink(tmp_path).ok else "copy")
    assert backend.name == expected
    [rec] = [r for r in caplog.records if r.getMessage() == "storage backend"]
    fields = rec.kv  # type: ignore[attr-defined]
    assert fields["backend"] == expected and fields["chosen_by"] == "auto" and fields["why"]
    if expected == "copy":
        assert "FICLONE" in fields["not_reflink"]
        assert fields["not_devicemapper"]
    # The probes leave nothing behind.
    assert list((tmp_path / "images").iterdir()) == []
    assert list((tmp_path / "sandboxes").iterdir()) == []


def test_unknown_backend(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        choose_backend("zfs", tmp_path)
