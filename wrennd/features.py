"""Detect the host features wrennd and its tests depend on.

Each probe returns a ``Feature``: whether it is usable and, if not, a reason
that names what is missing.  Tests skip on these reasons; ``host.info``
reports them.  Probes look at the real kernel; nothing is assumed.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from wrennd._native import ffi, lib


@dataclass(frozen=True)
class Feature:
    name: str
    available: bool
    reason: str = ""


def _ok(name: str) -> Feature:
    return Feature(name, True)


def _missing(name: str, reason: str) -> Feature:
    return Feature(name, False, reason)


@functools.cache
def root() -> Feature:
    if os.geteuid() == 0:
        return _ok("root")
    return _missing("root", f"needs uid 0 (running as uid {os.geteuid()})")


@functools.cache
def userfaultfd() -> Feature:
    # Open and negotiate a uffd exactly as Firecracker does (native/uffd_open.c), then drop it.
    rc = lib.wr_uffd_create(ffi.NULL)
    if rc >= 0:
        os.close(rc)
        return _ok("uffd")
    return _missing(
        "uffd",
        f"userfaultfd with UFFD_FEATURE_EVENT_REMOVE is not usable here: {os.strerror(-rc)}"
        " (kernel without CONFIG_USERFAULTFD, or vm.unprivileged_userfaultfd=0 for non-root)",
    )


@functools.cache
def netns() -> Feature:
    if not root().available:
        return _missing("netns", "network namespaces, veth and TAP need root")
    if not Path("/proc/self/ns/net").exists():
        return _missing("netns", "kernel without network namespaces (/proc/self/ns/net)")
    if not Path("/dev/net/tun").exists():
        return _missing("netns", "no TUN/TAP device (/dev/net/tun)")
    return _ok("netns")


@functools.cache
def device_mapper() -> Feature:
    if not Path("/dev/mapper/control").exists():
        return _missing("dm", "device-mapper is not available: /dev/mapper/control does not exist")
    if shutil.which("dmsetup") is None:
        return _missing("dm", "dmsetup is not installed")
    if not root().available:
        return _missing("dm", "device-mapper needs root")
    return _ok("dm")


def _loaded_modules() -> set[str]:
    try:
        return {p.name for p in Path("/sys/module").iterdir()}
    except OSError:
        return set()


@functools.cache
def kvm() -> Feature:
    """A KVM that boots a standard guest kernel (hardware virtualization)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return _missing("kvm", "/dev/kvm is missing or not accessible")
    modules = _loaded_modules()
    if "kvm_intel" in modules or "kvm_amd" in modules:
        return _ok("kvm")
    if "kvm_pvm" in modules:
        return _missing(
            "kvm",
            "/dev/kvm is kvm_pvm (pagetable-based virtualization), which boots only PVM"
            " guest kernels, not a standard Firecracker guest",
        )
    return _missing("kvm", "neither kvm_intel nor kvm_amd is loaded")


def all_features() -> list[Feature]:
    return [root(), userfaultfd(), netns(), device_mapper(), kvm()]


@dataclass(frozen=True)
class Binary:
    """An executable the daemon drives (Firecracker, fcsim, the jailer) and its version."""

    path: str
    present: bool
    version: str = ""
    reason: str = ""


def binary_version(path: Path, timeout: float = 5.0) -> Binary:
    """Run ``path --version`` and keep the first line it prints.

    Blocks for up to ``timeout`` seconds: call it from an executor.
    """
    if not path.is_file() or not os.access(path, os.X_OK):
        return Binary(str(path), False, reason=f"{path} is not an executable file")
    try:
        done = subprocess.run(
            [str(path), "--version"],
            capture_output=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return Binary(str(path), True, reason=f"{path} --version did not answer in {timeout} s")
    except OSError as e:
        return Binary(str(path), False, reason=f"{path} cannot be run: {e.strerror}")
    output = (done.stdout or done.stderr).decode(errors="replace")
    first = next((line.strip() for line in output.splitlines() if line.strip()), "")
    if done.returncode != 0:
        return Binary(str(path), True, first, f"{path} --version exited {done.returncode}")
    return Binary(str(path), True, first)
