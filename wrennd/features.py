"""Detect the host features wrennd and its tests depend on.

Each probe returns a ``Feature``: whether it is usable and, if not, a reason
that names what is missing.  One probe per feature, cached: the product
(storage backend choice, ``host.info``) and the test markers (tests/conftest.py)
use the same ones.  Every probe tries the feature on the real kernel (opens the
device and asks it, creates the namespace) rather than trusting that a path
exists: a stale or stray device node must not pass.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import shutil
import struct
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


# Tried in a throwaway network namespace, which the kernel frees when the command
# exits: a veth pair and a TAP device, the two link kinds a sandbox needs.
_NETNS_TRIAL = (
    "ip link add wrprobe0 type veth peer name wrprobe1 && ip tuntap add dev wrprobe2 mode tap"
)


@functools.cache
def netns() -> Feature:
    if not root().available:
        return _missing("netns", "network namespaces, veth and TAP need root")
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return _missing("netns", f"{tool} is not installed (util-linux, iproute2)")
    try:
        done = subprocess.run(
            ["unshare", "--net", "sh", "-c", _NETNS_TRIAL],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return _missing("netns", "creating a network namespace with veth and TAP hung for 30 s")
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        return _missing(
            "netns", f"cannot create a network namespace with a veth pair and a TAP: {why[0]}"
        )
    return _ok("netns")


DM_CONTROL = Path("/dev/mapper/control")
# DM_VERSION = _IOWR(0xfd, 0, struct dm_ioctl), sizeof(struct dm_ioctl) == 312.
_DM_IOCTL_SIZE = 312
_DM_VERSION = (3 << 30) | (_DM_IOCTL_SIZE << 16) | (0xFD << 8) | 0


def dm_interface_version(control: Path = DM_CONTROL) -> tuple[int, int, int]:
    """Ask the device-mapper driver behind ``control`` for its ioctl interface version.

    Raises OSError when ``control`` is not a working device-mapper control node: a
    plain file or another device answers ENOTTY, a node whose driver the kernel
    lacks fails to open with ENODEV or ENXIO.
    """
    buf = bytearray(_DM_IOCTL_SIZE)
    struct.pack_into("=3II", buf, 0, 4, 0, 0, _DM_IOCTL_SIZE)  # we speak interface 4.x
    fd = os.open(control, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _DM_VERSION, buf)
    finally:
        os.close(fd)
    major, minor, patch = struct.unpack_from("=3I", buf, 0)
    return major, minor, patch


@functools.cache
def device_mapper(control: Path = DM_CONTROL) -> Feature:
    try:
        version = dm_interface_version(control)
    except OSError as e:
        why = f"{control}: {e.strerror}"
        if e.errno in (errno.ENODEV, errno.ENXIO, errno.ENOTTY):
            why += " (no device-mapper driver behind this node)"
        elif e.errno in (errno.EACCES, errno.EPERM):
            why += " (device-mapper needs root)"
        return _missing("dm", f"device-mapper is not available: {why}")
    if version[0] != 4:
        return _missing("dm", f"device-mapper ioctl interface {version} is not 4.x")
    if shutil.which("dmsetup") is None:
        return _missing("dm", "dmsetup is not installed")
    return _ok("dm")


def _loaded_modules() -> set[str]:
    try:
        return {p.name for p in Path("/sys/module").iterdir()}
    except OSError:
        return set()


# From <linux/kvm.h>: _IO(KVMIO, 0x00) and _IO(KVMIO, 0x01); the stable API is 12.
_KVM_GET_API_VERSION = 0xAE00
_KVM_CREATE_VM = 0xAE01
_KVM_API_VERSION = 12


def _try_kvm_vm(dev: str = "/dev/kvm") -> str:
    """Create (and drop) an empty VM: "" when that works, else why not."""
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"{dev}: {e.strerror}"
    try:
        api = fcntl.ioctl(fd, _KVM_GET_API_VERSION)
        if api != _KVM_API_VERSION:
            return f"{dev} speaks KVM API {api}, not {_KVM_API_VERSION}"
        os.close(fcntl.ioctl(fd, _KVM_CREATE_VM, 0))
    except OSError as e:
        return f"{dev}: creating a VM failed: {e.strerror}"
    finally:
        os.close(fd)
    return ""


@functools.cache
def kvm() -> Feature:
    """A KVM that boots a standard guest kernel (hardware virtualization)."""
    failure = _try_kvm_vm()
    if failure:
        return _missing("kvm", failure)
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


# wrennd-merge-exec, built by setup.py beside this package (native/exec/merge_exec.c).
MERGE_EXEC = Path(__file__).resolve().parent / "wrennd-merge-exec"
KSM_RUN = Path("/sys/kernel/mm/ksm/run")


@functools.cache
def ksm() -> Feature:
    """KSM with per-process merging that survives exec: a process started through
    wrennd-merge-exec must show ``ksm_merge_any: yes`` in its own /proc/self/ksm_stat."""
    if not KSM_RUN.exists():
        return _missing("ksm", "the kernel has no KSM (CONFIG_KSM): /sys/kernel/mm/ksm is absent")
    if not os.access(MERGE_EXEC, os.X_OK):
        return _missing("ksm", f"{MERGE_EXEC} is not built (make install)")
    try:
        done = subprocess.run(
            [str(MERGE_EXEC), "/bin/cat", "/proc/self/ksm_stat"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return _missing("ksm", f"{MERGE_EXEC} could not run: {e}")
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip()
        return _missing("ksm", f"PR_SET_MEMORY_MERGE is not usable (Linux >= 6.7 needed): {why}")
    if "ksm_merge_any: yes" not in done.stdout:
        return _missing("ksm", "PR_SET_MEMORY_MERGE does not survive exec on this kernel")
    return _ok("ksm")


def all_features() -> list[Feature]:
    return [root(), userfaultfd(), netns(), device_mapper(), kvm(), ksm()]


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
