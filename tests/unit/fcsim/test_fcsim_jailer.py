"""fcsim-jailer's command line: the jailer's checks, and what it binds for Python."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from wrennd_sim.fcsim import jailer


def exe(tmp_path: Path, name: str) -> Path:
    f = tmp_path / name
    f.write_text("#!/bin/sh\n")
    f.chmod(0o755)
    return f


def test_arguments_after_the_separator_go_to_the_vmm(tmp_path: Path) -> None:
    fc = exe(tmp_path, "fcsim-firecracker")
    args, extra = jailer.parse_args(
        ["--id", "sb-1", "--exec-file", str(fc), "--uid", "7", "--gid", "8",
         "--cgroup-version", "2", "--cgroup", "hugetlb.2MB.max=0", "--",
         "--api-sock", "/run/api.sock"]
    )  # fmt: skip
    assert (args.id, args.uid, args.gid, args.cgroup) == ("sb-1", 7, 8, ["hugetlb.2MB.max=0"])
    assert args.chroot_base_dir == Path("/srv/jailer"), "the jailer's default"
    assert extra == ["--api-sock", "/run/api.sock"]


@pytest.mark.parametrize(
    ("name", "argv", "needle"),
    [
        ("fcsim-firecracker", ["--id", "bad/id"], "--id"),
        ("fcsim", ["--id", "sb-1"], "must contain 'firecracker'"),
        ("fcsim-firecracker", ["--id", "sb-1", "--cgroup", "cpu.max=1"], "v2 hierarchy only"),
    ],
)
def test_what_the_jailer_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, argv: list[str], needle: str
) -> None:
    fc = exe(tmp_path, name)
    with pytest.raises(SystemExit):
        jailer.parse_args([*argv, "--exec-file", str(fc), "--uid", "7", "--gid", "8"])
    assert needle in capsys.readouterr().err


def test_pairs_and_limits_are_checked() -> None:
    assert jailer.pairs(["no-file=64", "fsize=1"], "resource-limit") == {
        "no-file": "64",
        "fsize": "1",
    }
    with pytest.raises(jailer.JailError, match="<name>=<value>"):
        jailer.pairs(["no-file"], "resource-limit")
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    with pytest.raises(jailer.JailError, match="expected one of"):
        jailer.set_limits({"cores": "1"})
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == before, "a bad name sets nothing"


def test_python_dirs_cover_the_interpreter_and_packages_without_overlap() -> None:
    dirs = jailer.python_dirs()
    for needed in (Path(sys.executable).resolve(), Path(jailer.__file__).resolve()):
        assert any(d in needed.parents for d in dirs), needed
    for a in dirs:
        assert not any(b != a and b in a.parents for b in dirs), "nested binds"


def test_version_answers_like_the_jailer() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "wrennd_sim.fcsim.jailer", "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("Jailer v") and "fcsim-jailer" in out


def test_the_guest_helper_never_follows_a_drive_path_out_of_the_jail(tmp_path: Path) -> None:
    from wrennd_sim.fcsim.guesthelper import in_chroot

    chroot = tmp_path / "root"
    chroot.mkdir()
    (chroot / "rootfs").write_bytes(b"x")
    assert in_chroot(chroot, "/rootfs") == str(chroot / "rootfs")
    (tmp_path / "host-secret").write_bytes(b"y")
    (chroot / "escape").symlink_to(tmp_path / "host-secret")  # what a jailed user could make
    for path in ("/escape", "/../host-secret", "/run/../../host-secret"):
        with pytest.raises(PermissionError, match="out of the jail"):
            in_chroot(chroot, path)
