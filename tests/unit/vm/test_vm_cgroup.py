"""Jail cgroup limits from a sandbox's shape, and the removal of a jail's cgroup."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from wrennd.vm import cgroup


def test_limits_come_from_vcpus_and_memory_for_available_controllers() -> None:
    every = {"cpu", "memory", "hugetlb"}
    got = cgroup.limits(2, 512, every)
    assert got["cpu.max"] == "200000 100000", "two CPUs' worth of time per period"
    assert got["memory.max"] == str((512 + cgroup.MEMORY_OVERHEAD_MIB) << 20)
    assert got["hugetlb.2MB.max"] == str(512 << 20)
    assert cgroup.limits(2, 512, {"hugetlb"}) == {"hugetlb.2MB.max": str(512 << 20)}
    assert cgroup.limits(1, 128, set()) == {}


def test_cgroup2_root_from_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
    )
    assert cgroup.cgroup2_root(info) == Path("/sys/fs/cgroup/unified")
    info.write_text("35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    assert cgroup.cgroup2_root(info) is None


@pytest.fixture
def top() -> Iterator[Path]:
    """A fresh cgroup under the cgroup2 root (removed, with what runs in it, afterwards)."""
    root = cgroup.cgroup2_root()
    if root is None:
        pytest.skip("this machine mounts no cgroup2 hierarchy")
    path = root / f"wrennd-unit-{os.getpid()}"
    path.mkdir()
    yield path
    if path.exists():
        cgroup.remove(path)


@pytest.mark.root
def test_remove_kills_what_is_left_and_removes_nested_cgroups(top: Path) -> None:
    (top / "child").mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (top / "child" / "cgroup.procs").write_text(str(sleeper.pid))
        assert cgroup.remove(top)
        assert sleeper.wait(5) == -9, "killed through cgroup.kill"
        assert not top.exists()
        assert not cgroup.remove(top), "absent: nothing to do"
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.root
def test_remove_lets_what_is_left_exit_by_itself_within_settle(top: Path) -> None:
    finisher = subprocess.Popen(["sleep", "0.3"])
    try:
        (top / "cgroup.procs").write_text(str(finisher.pid))
        assert cgroup.populated(top)
        assert cgroup.remove(top, settle=10)
        assert finisher.wait(5) == 0, "it finished by itself: not killed"
        assert not top.exists()
    finally:
        finisher.kill()
        finisher.wait()
