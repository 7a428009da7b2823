"""Skip tests whose kernel feature is missing, with a reason that names it.

A test marked ``root``, ``uffd``, ``netns``, ``dm`` or ``kvm`` runs only where
the probe in wrennd.features finds the feature, one marked ``qemu`` only where
QEMU can run a microvm guest (make guest-smoke); elsewhere pytest prints the
probe's reason in the -rs summary.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import pytest

from wrennd import features

REPO = Path(__file__).resolve().parents[1]


@functools.cache
def qemu() -> features.Feature:
    """qemu-system-x86_64 installed, runnable, with the microvm machine and TCG."""
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        return features.Feature("qemu", False, "qemu-system-x86_64 is not installed")
    for arg, want in (("-machine", "microvm"), ("-accel", "tcg")):
        try:
            done = subprocess.run(
                [binary, arg, "help"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return features.Feature("qemu", False, f"qemu-system-x86_64 cannot run: {e}")
        if done.returncode != 0 or want not in done.stdout.split():
            return features.Feature("qemu", False, f"qemu-system-x86_64 has no {want} {arg[1:]}")
    return features.Feature("qemu", True)


PROBES = {
    "root": features.root,
    "uffd": features.userfaultfd,
    "netns": features.netns,
    "dm": features.device_mapper,
    "kvm": features.kvm,
    "qemu": qemu,
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
        [str(REPO / "images" / "build-image"), "-"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        timeout=900,
    )
    return Path(out.stdout.strip().splitlines()[-1])
