"""The host probes agree with the kernel they probe."""

from __future__ import annotations

import os
from pathlib import Path

from wrennd import features


def test_root_matches_euid() -> None:
    assert features.root().available == (os.geteuid() == 0)


def test_every_missing_feature_has_a_reason() -> None:
    for f in features.all_features():
        assert f.available or f.reason, f


def test_uffd_probe_matches_the_device() -> None:
    # The probe opens a uffd for real; where /dev/userfaultfd is usable by us it must succeed.
    if os.access("/dev/userfaultfd", os.R_OK | os.W_OK):
        assert features.userfaultfd().available


def test_kvm_pvm_is_not_a_usable_kvm() -> None:
    modules = {p.name for p in Path("/sys/module").iterdir()}
    if "kvm_pvm" in modules and not {"kvm_intel", "kvm_amd"} & modules:
        assert not features.kvm().available
        assert "kvm_pvm" in features.kvm().reason


def test_dm_reason_names_the_control_node() -> None:
    if not Path("/dev/mapper/control").exists():
        assert "/dev/mapper/control" in features.device_mapper().reason
