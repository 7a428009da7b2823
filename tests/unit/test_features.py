"""The host probes agree with the kernel they probe, and are not fooled by stray paths."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from wrennd import features


def _modules() -> set[str]:
    return {p.name for p in Path("/sys/module").iterdir()}


def _pvm_only() -> bool:
    modules = _modules()
    return "kvm_pvm" in modules and not {"kvm_intel", "kvm_amd"} & modules


def test_root_matches_euid() -> None:
    assert features.root().available == (os.geteuid() == 0)


def test_every_missing_feature_has_a_reason() -> None:
    for f in features.all_features():
        assert f.available or f.reason, f


def _open_uffd_from_python() -> bool:
    """An independent try, not through the native engine: /dev/userfaultfd's
    USERFAULTFD_IOC_NEW, else the userfaultfd(2) syscall through libc."""
    with contextlib.suppress(OSError):
        dev = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
        try:
            os.close(fcntl.ioctl(dev, 0xAA00, os.O_CLOEXEC | os.O_NONBLOCK))
            return True
        except OSError:
            pass
        finally:
            os.close(dev)
    sys_userfaultfd = 323  # x86-64
    fd = ctypes.CDLL(None, use_errno=True).syscall(sys_userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK)
    if fd >= 0:
        os.close(fd)
    return bool(fd >= 0)


def test_uffd_probe_agrees_with_an_independent_open() -> None:
    assert features.userfaultfd().available == _open_uffd_from_python(), features.userfaultfd()


@pytest.mark.skipif(not _pvm_only(), reason="kernel has no kvm_pvm-only /dev/kvm to refuse")
def test_kvm_pvm_is_not_a_usable_kvm() -> None:
    assert not features.kvm().available
    assert "kvm_pvm" in features.kvm().reason


@pytest.mark.skipif(
    _pvm_only() or not os.path.exists("/dev/kvm"),
    reason="kernel without kvm_intel/kvm_amd behind /dev/kvm",
)
def test_kvm_probe_creates_a_vm() -> None:
    assert features._try_kvm_vm() == ""
    assert features.kvm().available == os.access("/dev/kvm", os.R_OK | os.W_OK)


def test_kvm_trial_refuses_what_is_not_kvm(tmp_path: Path) -> None:
    assert features._try_kvm_vm("/dev/null").startswith("/dev/null: creating a VM failed")
    absent = str(tmp_path / "kvm")
    assert features._try_kvm_vm(absent) == f"{absent}: No such file or directory"


def test_dm_probe_is_not_fooled_by_a_plain_file(tmp_path: Path) -> None:
    control = tmp_path / "control"
    control.write_bytes(b"")
    got = features.device_mapper(control)
    assert not got.available
    assert str(control) in got.reason and "Inappropriate ioctl" in got.reason


@pytest.mark.root
def test_dm_probe_is_not_fooled_by_a_stray_char_node(tmp_path: Path) -> None:
    # What a `dmsetup` run leaves on a kernel without device-mapper: a char node at
    # misc 10:236.  Beside it, a char node of another driver (1:3, /dev/null).
    stray = tmp_path / "control"
    os.mknod(stray, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    got = features.device_mapper(stray)
    assert not got.available and str(stray) in got.reason
    # The device-mapper node number itself passes only where the kernel has the driver:
    # opening it loads dm_mod if it is a module, so /proc/misc is read afterwards.
    misc = tmp_path / "misc-236"
    os.mknod(misc, stat.S_IFCHR | 0o600, os.makedev(10, 236))
    got = features.device_mapper(misc)
    assert got.available == (_dm_registered() and shutil.which("dmsetup") is not None), got


def _dm_registered() -> bool:
    return "device-mapper" in Path("/proc/misc").read_text()


def test_dm_probe_agrees_with_the_kernels_misc_devices() -> None:
    got = features.device_mapper()
    if not features.root().available:
        assert not got.available
        return
    expected = _dm_registered() and features.DM_CONTROL.exists() and shutil.which("dmsetup")
    assert got.available == bool(expected), got
    assert got.available or str(features.DM_CONTROL) in got.reason or "dmsetup" in got.reason


@pytest.mark.root
def test_netns_probe_agrees_with_unshare() -> None:
    done = subprocess.run(
        ["unshare", "--net", "ip", "tuntap", "add", "dev", "t0", "mode", "tap"],
        capture_output=True,
        check=False,
    )
    assert features.netns().available == (done.returncode == 0), features.netns()
