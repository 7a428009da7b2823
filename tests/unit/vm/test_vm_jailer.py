"""Jailer command line and chroot layout (the jailer binary itself is not on this host)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from wrennd.vm.errors import JailerError
from wrennd.vm.jailer import JailerSpec, jail_socket_dir, mounts_under, place_files, remove_jail


def spec(tmp_path: Path, **kw: object) -> JailerSpec:
    base = {
        "jailer_bin": Path("/usr/local/bin/jailer"),
        "exec_file": Path("/usr/local/bin/firecracker"),
        "vm_id": "sb-0001",
        "uid": 1234,
        "gid": 4321,
        "chroot_base": tmp_path / "jail",
    }
    base.update(kw)
    return JailerSpec(**base)  # type: ignore[arg-type]


def test_argv(tmp_path: Path) -> None:
    s = spec(
        tmp_path,
        netns=Path("/run/netns/wrn-3"),
        cgroups={"cpu.max": "200000 100000", "memory.max": "1073741824"},
        parent_cgroup="wrennd",
        resource_limits={"no-file": 4096},
    )
    argv = s.argv(["--api-sock", "/run/api.sock", "--id", "sb-0001"])
    assert argv == [
        "/usr/local/bin/jailer",
        "--id",
        "sb-0001",
        "--exec-file",
        "/usr/local/bin/firecracker",
        "--uid",
        "1234",
        "--gid",
        "4321",
        "--chroot-base-dir",
        str(tmp_path / "jail"),
        "--cgroup-version",
        "2",
        "--parent-cgroup",
        "wrennd",
        "--cgroup",
        "cpu.max=200000 100000",
        "--cgroup",
        "memory.max=1073741824",
        "--resource-limit",
        "no-file=4096",
        "--netns",
        "/run/netns/wrn-3",
        "--new-pid-ns",
        "--",
        "--api-sock",
        "/run/api.sock",
        "--id",
        "sb-0001",
    ]
    assert s.chroot_dir == tmp_path / "jail" / "firecracker" / "sb-0001" / "root"
    assert s.pid_file == s.chroot_dir / "firecracker.pid"


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"vm_id": "bad/id"}, "jailer id"),
        ({"vm_id": "x" * 65}, "jailer id"),
        ({"exec_file": Path("/usr/bin/fcsim")}, "contains 'firecracker'"),
        ({"jailer_bin": Path("jailer")}, "absolute"),
        ({"uid": -1}, "uid/gid"),
        ({"cgroups": {"cpu max": "1"}}, "cgroup file"),
        ({"resource_limits": {"nproc": 1}}, "resource limit"),
    ],
)
def test_refuses_bad_specs(tmp_path: Path, kw: dict[str, object], needle: str) -> None:
    with pytest.raises(JailerError, match=needle):
        spec(tmp_path, **kw)


def test_host_path_stays_inside_the_chroot(tmp_path: Path) -> None:
    s = spec(tmp_path)
    assert s.host_path(PurePosixPath("/run/api.sock")) == s.chroot_dir / "run" / "api.sock"
    with pytest.raises(JailerError):
        s.host_path(PurePosixPath("/../../etc/passwd"))
    with pytest.raises(JailerError):
        s.host_path(PurePosixPath("relative"))


@pytest.mark.root
def test_place_files_hardlinks_and_owns_only_writable(tmp_path: Path) -> None:
    s = spec(tmp_path)
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"kernel")
    rootfs = tmp_path / "rootfs.cow"
    rootfs.write_bytes(b"rootfs")
    placed = place_files(s, {"/vmlinux": kernel, "/rootfs.ext4": rootfs}, writable={"/rootfs.ext4"})
    assert placed == {
        "/vmlinux": PurePosixPath("/vmlinux"),
        "/rootfs.ext4": PurePosixPath("/rootfs.ext4"),
    }
    jailed_kernel = s.chroot_dir / "vmlinux"
    jailed_rootfs = s.chroot_dir / "rootfs.ext4"
    assert jailed_kernel.stat().st_ino == kernel.stat().st_ino, "not a hard link"
    assert jailed_rootfs.stat().st_ino == rootfs.stat().st_ino
    assert (jailed_rootfs.stat().st_uid, jailed_rootfs.stat().st_gid) == (1234, 4321)
    assert jailed_kernel.stat().st_uid == os.geteuid(), "a shared kernel must keep its owner"
    # Placing again is idempotent; a different file at the same jail path is refused.
    place_files(s, {"/vmlinux": kernel})
    other = tmp_path / "other"
    other.write_bytes(b"x")
    with pytest.raises(JailerError, match="exists and is not"):
        place_files(s, {"/vmlinux": other})
    run = jail_socket_dir(s)
    assert run == s.chroot_dir / "run"
    assert run.stat().st_uid == 1234


def test_place_files_refuses_unknown_writable(tmp_path: Path) -> None:
    with pytest.raises(JailerError, match="writable"):
        place_files(spec(tmp_path), {}, writable={"/rootfs.ext4"})


@pytest.mark.root
def test_place_files_across_filesystems_binds_and_remove_unmounts(tmp_path: Path) -> None:
    other_fs = tmp_path / "tmpfs"
    other_fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "fct-jailer", other_fs], check=True)
    s = spec(tmp_path)
    try:
        src = other_fs / "vmlinux"
        src.write_bytes(b"kernel on another filesystem")
        place_files(s, {"/vmlinux": src})
        jailed = s.chroot_dir / "vmlinux"
        assert jailed.read_bytes() == b"kernel on another filesystem"
        assert mounts_under(s.jail_dir) == [jailed], "bind-mounted, not copied"
        assert remove_jail(s.jail_dir) and not s.jail_dir.exists()
        assert mounts_under(s.jail_dir) == []
        assert src.read_bytes() == b"kernel on another filesystem", "the source is untouched"
    finally:
        remove_jail(s.jail_dir)
        subprocess.run(["umount", other_fs], check=True)


@pytest.mark.root
def test_place_files_gives_a_device_node_its_own_node(tmp_path: Path) -> None:
    s = spec(tmp_path)
    place_files(s, {"/rootfs": Path("/dev/null")}, writable={"/rootfs"})
    node = (s.chroot_dir / "rootfs").stat()
    assert node.st_rdev == os.stat("/dev/null").st_rdev and node.st_uid == 1234
    place_files(s, {"/rootfs": Path("/dev/null")})  # again: the node is there already


def test_firecracker_flags_inside_the_jail_use_jail_paths(tmp_path: Path) -> None:
    from wrennd.vm.launcher import FirecrackerArgs, VmmFiles

    s = spec(tmp_path, netns=Path("/run/netns/wrn-1"))
    files = VmmFiles.under(s.host_path(PurePosixPath("/run")))
    fc = FirecrackerArgs(s.exec_file, s.vm_id, files)
    argv = s.argv(fc.flags(api_socket=Path("/run/api.sock"), log_file=Path("/vmm.log")))
    tail = argv[argv.index("--") + 1 :]
    assert tail[tail.index("--api-sock") + 1] == "/run/api.sock"
    assert tail[tail.index("--log-path") + 1] == "/vmm.log"
    # The daemon waits for the socket where the jail puts it on the host.
    assert s.host_path(PurePosixPath("/run/api.sock")) == files.api_socket
