"""host.info's kernel section: read from the metadata make kernel leaves beside the vmlinux."""

from __future__ import annotations

import json
from pathlib import Path

from wrennd.vm import kernel

DEBIAN = {
    "format": 1,
    "source": "debian",
    "package": "linux-image-6.1.0-56-cloud-amd64",
    "version": "6.1.192-2",
    "release": "6.1.0-56-cloud-amd64",
    "initrd": "vmlinux.initrd",
    "virtio_mmio_discovery": "acpi",
    "min_firecracker": "1.8.0",
    "modules": ["virtio_mmio.ko"],
}


def _install(tmp_path: Path, meta: object, initrd: bool = True) -> Path:
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(b"\x7fELF")
    (tmp_path / "vmlinux.json").write_text(json.dumps(meta))
    if initrd:
        (tmp_path / "vmlinux.initrd").write_bytes(b"070701")
    return vmlinux


def test_debian_kernel_with_its_initrd(tmp_path: Path) -> None:
    vmlinux = _install(tmp_path, DEBIAN)
    info = kernel.describe(vmlinux)
    assert info["source"] == "debian"
    assert info["present"] is True
    assert (info["package"], info["version"]) == (DEBIAN["package"], DEBIAN["version"])
    assert info["min_firecracker"] == "1.8.0"
    assert info["initrd"] == {"path": str(tmp_path / "vmlinux.initrd"), "present": True}
    assert info["reason"] == ""
    assert "modules" not in info  # only the fields an operator needs
    assert kernel.initrd_path(vmlinux) == tmp_path / "vmlinux.initrd"


def test_firecracker_ci_kernel_needs_no_initrd(tmp_path: Path) -> None:
    url = "https://x/vmlinux-6.1.1"
    meta = {"format": 1, "source": "firecracker-ci", "url": url, "initrd": None}
    vmlinux = _install(tmp_path, meta, initrd=False)
    info = kernel.describe(vmlinux)
    assert (info["source"], info["url"], info["initrd"]) == ("firecracker-ci", meta["url"], None)
    assert kernel.initrd_path(vmlinux) is None


def test_missing_initrd_and_missing_kernel_are_said(tmp_path: Path) -> None:
    vmlinux = _install(tmp_path, DEBIAN, initrd=False)
    info = kernel.describe(vmlinux)
    assert info["initrd"]["present"] is False
    assert "vmlinux.initrd, which is missing" in info["reason"]
    vmlinux.unlink()
    assert kernel.describe(vmlinux)["reason"] == f"{vmlinux} does not exist"


def test_no_metadata_means_unknown_source(tmp_path: Path) -> None:
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(b"\x7fELF")
    info = kernel.describe(vmlinux)
    assert (info["source"], info["present"]) == ("unknown", True)
    assert "not installed by make kernel" in info["reason"]
    assert kernel.initrd_path(vmlinux) is None


def test_bad_metadata_is_reported_not_trusted(tmp_path: Path) -> None:
    for bad in ("{not json", json.dumps(["debian"]), json.dumps({**DEBIAN, "initrd": "../x"})):
        vmlinux = _install(tmp_path, {})
        (tmp_path / "vmlinux.json").write_text(bad)
        info = kernel.describe(vmlinux)
        assert info["source"] == "unknown"
        assert info["reason"].startswith("unreadable kernel metadata")
        assert kernel.initrd_path(vmlinux) is None
