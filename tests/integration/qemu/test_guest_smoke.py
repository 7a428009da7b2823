"""make guest-smoke: the image's init and agent as PID 1 of a real kernel under QEMU.

The kernel is the Debian-derived one (images/debian_kernel.py, cached by package
version under /var/cache/wrennd/kernels), the image the project's (cached under
/var/cache/wrennd/images).  Both are built here when missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.qemu, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[3]
SMOKE_BUDGET_S = 90.0


@pytest.fixture(scope="session")
def debian_kernel() -> Path:
    """The cache entry of the Debian-derived kernel: vmlinux, initrd, kernel.json."""
    out = subprocess.run(
        [sys.executable, str(REPO / "images" / "debian_kernel.py"), "-"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        timeout=300,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def test_the_derived_kernel_is_an_uncompressed_x86_64_elf(debian_kernel: Path) -> None:
    described = subprocess.run(
        ["file", "-b", str(debian_kernel / "vmlinux")], capture_output=True, text=True, check=True
    ).stdout
    assert described.startswith("ELF 64-bit LSB executable, x86-64"), described
    meta = json.loads((debian_kernel / "kernel.json").read_text())
    assert meta["source"] == "debian"
    assert meta["virtio_mmio_discovery"] == "acpi"  # CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is off
    config = (debian_kernel / "config").read_text()
    assert "# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set" in config
    assert "CONFIG_VIRTIO_MMIO=m" in config
    listing = subprocess.run(
        f"zcat {debian_kernel / 'initrd'} | cpio -t --quiet",
        shell=True, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for name in ("init", "bin/busybox", "dev/console", "etc/wrenn-modules"):
        assert name in listing
    assert any(p.endswith("/virtio_blk.ko") for p in listing)


def test_guest_smoke_boots_the_image_and_checks_it_through_the_agent(
    debian_kernel: Path, guest_image: Path
) -> None:
    argv = [sys.executable, str(REPO / "images" / "guest_smoke.py")]
    argv += ["--kernel", str(debian_kernel / "vmlinux"), "--initrd", str(debian_kernel / "initrd")]
    argv += ["--meta", str(debian_kernel / "kernel.json"), "--image", str(guest_image)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=SMOKE_BUDGET_S + 30)
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-4000:]
    result = json.loads(lines[-1])
    assert done.returncode == 0 and result["ok"], f"{result}\n{done.stderr[-4000:]}"
    meta = json.loads((debian_kernel / "kernel.json").read_text())
    assert result["uname"]["release"] == meta["release"] != os.uname().release
    assert result["uname"]["root_mount"].startswith("/dev/vda / ext4 rw")
    loaded = set(result["uname"]["modules_loaded"])
    assert {"virtio_mmio", "virtio_blk", "virtio_net", "vmw_vsock_virtio_transport"} <= loaded
    assert "ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off" in result["cmdline"]
    freeze = result["freeze"]
    assert freeze["blocked_while_frozen"] and freeze["landed_after_thaw"]
    assert result["clock"]["stepped_ahead_s"] > 86_000
    assert abs(result["clock"]["guest_minus_host_s"]) <= 5
    assert result["shutdown"] == {**result["shutdown"], "exit_code": 0, "fsck_clean": True}
    assert result["elapsed_s"] <= SMOKE_BUDGET_S
