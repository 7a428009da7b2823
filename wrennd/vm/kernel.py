"""Where the guest kernel came from: the metadata file beside it.

``make kernel`` (images/fetch-kernel) leaves ``<kernel>.json`` next to the
vmlinux: its source (``firecracker-ci``, or ``debian`` for the kernel derived
from linux-image-cloud-amd64), the package version or URL, the kernel
release, and the initrd it needs, named relative to the kernel's directory.
host.info reports it; a kernel installed by hand has no such file and is
reported as of unknown source.  Reads are blocking: call at startup.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Metadata fields passed through to host.info as they are.
REPORTED = (
    "release",
    "package",
    "version",
    "url",
    "virtio_mmio_discovery",
    "min_firecracker",
    "vmlinux_sha256",
)


def metadata_path(kernel: Path) -> Path:
    return kernel.with_name(kernel.name + ".json")


def read_metadata(kernel: Path) -> dict[str, Any]:
    """The kernel's metadata; raises OSError or ValueError saying what is wrong with it."""
    path = metadata_path(kernel)
    obj = json.loads(path.read_text())
    if not isinstance(obj, dict) or not isinstance(obj.get("source"), str):
        raise ValueError(f"{path} is not a kernel metadata object (no 'source')")
    initrd = obj.get("initrd")
    if initrd is not None and (not isinstance(initrd, str) or "/" in initrd or not initrd):
        raise ValueError(f"{path}: 'initrd' must be a file name beside the kernel")
    return obj


def initrd_path(kernel: Path) -> Path | None:
    """The initrd this kernel boots with (Firecracker's boot-source initrd_path), if any."""
    try:
        initrd = read_metadata(kernel).get("initrd")
    except (OSError, ValueError):
        return None
    return None if initrd is None else kernel.parent / initrd


def describe(kernel: Path) -> dict[str, Any]:
    """The ``kernel`` section of host.info."""
    out: dict[str, Any] = {
        "path": str(kernel),
        "present": kernel.is_file(),
        "metadata": str(metadata_path(kernel)),
        "source": "unknown",
        "initrd": None,
        "reason": "",
    }
    try:
        meta = read_metadata(kernel)
    except FileNotFoundError:
        out["reason"] = "no metadata beside the kernel: not installed by make kernel"
        return out
    except (OSError, ValueError) as e:
        out["reason"] = f"unreadable kernel metadata: {e}"
        return out
    out["source"] = meta["source"]
    out.update({key: meta[key] for key in REPORTED if key in meta})
    if meta.get("initrd") is not None:
        initrd = kernel.parent / meta["initrd"]
        out["initrd"] = {"path": str(initrd), "present": initrd.is_file()}
        if not initrd.is_file():
            out["reason"] = f"the kernel needs {initrd}, which is missing"
    if not out["present"]:
        out["reason"] = f"{kernel} does not exist"
    return out
