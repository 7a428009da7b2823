"""Skip tests whose kernel feature is missing, with a reason that names it.

A test marked ``root``, ``uffd``, ``netns``, ``dm`` or ``kvm`` runs only where
the probe in wrennd.features finds the feature; elsewhere pytest prints the
probe's reason in the -rs summary.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from wrennd import features

PROBES = {
    "root": features.root,
    "uffd": features.userfaultfd,
    "netns": features.netns,
    "dm": features.device_mapper,
    "kvm": features.kvm,
}


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers():
        probe = PROBES.get(mark.name)
        if probe is None:
            continue
        feature = probe()
        if not feature.available:
            pytest.skip(f"{mark.name}: {feature.reason}")


@pytest.fixture(scope="session")
def guest_image() -> Path:
    """The project's guest image (images/build-image: cached by the hash of its
    inputs under /var/cache/wrennd/images, built here when missing, ~1 min)."""
    out = subprocess.run(
        [str(Path(__file__).resolve().parents[1] / "images" / "build-image"), "-"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        timeout=900,
    )
    return Path(out.stdout.strip().splitlines()[-1])
