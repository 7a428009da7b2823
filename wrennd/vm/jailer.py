"""The Firecracker jailer: its command line and the chroot it expects.

The jailer (shipped with Firecracker) creates
``<chroot_base>/<exec file name>/<id>/root``, moves itself into the cgroups and
network namespace given on its command line (and, with ``--new-pid-ns``, a new
PID namespace), drops to ``uid``/``gid``, chroots there and execs Firecracker
with the arguments after ``--``. Every path Firecracker sees is then relative
to that root: the kernel, the rootfs, the API socket, the log. So the daemon
places files in the chroot by hard link (no copy; the chroot base should be on
the state directory's filesystem), else by bind mount, and gives Firecracker
jail paths. Neither the jailer nor Firecracker removes a jail: ``remove_jail``
does.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import stat
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from wrennd import mountinfo
from wrennd.vm.errors import JailerError

_ID_RE = re.compile(r"[A-Za-z0-9-]{1,64}")
_CGROUP_KEY_RE = re.compile(r"[a-z0-9_]+\.[A-Za-z0-9_.]+")
RESOURCE_LIMITS = ("fsize", "no-file")
MS_BIND = 0x1000
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


@dataclass(frozen=True)
class JailerSpec:
    jailer_bin: Path
    exec_file: Path
    vm_id: str
    uid: int
    gid: int
    chroot_base: Path = Path("/srv/jailer")
    netns: Path | None = None
    new_pid_ns: bool = True
    daemonize: bool = False
    cgroups: Mapping[str, str] = field(default_factory=dict)
    parent_cgroup: str | None = None
    resource_limits: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _ID_RE.fullmatch(self.vm_id):
            raise JailerError(f"jailer id {self.vm_id!r}: expected 1-64 of [A-Za-z0-9-]")
        if "firecracker" not in self.exec_file.name:
            raise JailerError(
                f"exec file {self.exec_file}: the jailer only runs a binary whose name"
                " contains 'firecracker'"
            )
        for p, what in ((self.jailer_bin, "jailer"), (self.exec_file, "exec file")):
            if not p.is_absolute():
                raise JailerError(f"{what} {p}: expected an absolute path")
        if not self.chroot_base.is_absolute():
            raise JailerError(f"chroot base {self.chroot_base}: expected an absolute path")
        if self.uid < 0 or self.gid < 0:
            raise JailerError(f"uid/gid {self.uid}/{self.gid}: expected non-negative ids")
        for key in self.cgroups:
            if not _CGROUP_KEY_RE.fullmatch(key):
                raise JailerError(f"cgroup file {key!r}: expected <controller>.<file>")
        for key in self.resource_limits:
            if key not in RESOURCE_LIMITS:
                raise JailerError(
                    f"resource limit {key!r}: expected one of {', '.join(RESOURCE_LIMITS)}"
                )

    @property
    def jail_dir(self) -> Path:
        """``<chroot base>/<exec file name>/<id>``: everything of this jail, the root inside."""
        return self.chroot_base / self.exec_file.name / self.vm_id

    @property
    def chroot_dir(self) -> Path:
        return self.jail_dir / "root"

    def cgroup_dir(self, root: Path) -> Path:
        """The cgroup the jailer makes (v2): ``<root>/<parent cgroup>/<id>``."""
        return root / (self.parent_cgroup or self.exec_file.name) / self.vm_id

    @property
    def pid_file(self) -> Path:
        return self.chroot_dir / f"{self.exec_file.name}.pid"

    def host_path(self, jail_path: PurePosixPath) -> Path:
        """Where a path Firecracker sees inside the jail is on the host."""
        if not jail_path.is_absolute() or ".." in jail_path.parts:
            raise JailerError(f"jail path {jail_path}: expected absolute, without '..'")
        return self.chroot_dir.joinpath(*jail_path.parts[1:])

    def argv(self, firecracker_args: Sequence[str]) -> list[str]:
        """The jailer's command line; ``firecracker_args`` use jail paths."""
        args = [
            str(self.jailer_bin),
            "--id",
            self.vm_id,
            "--exec-file",
            str(self.exec_file),
            "--uid",
            str(self.uid),
            "--gid",
            str(self.gid),
            "--chroot-base-dir",
            str(self.chroot_base),
            "--cgroup-version",
            "2",
        ]
        if self.parent_cgroup is not None:
            args += ["--parent-cgroup", self.parent_cgroup]
        for key, value in sorted(self.cgroups.items()):
            args += ["--cgroup", f"{key}={value}"]
        for key, limit in sorted(self.resource_limits.items()):
            args += ["--resource-limit", f"{key}={limit}"]
        if self.netns is not None:
            args += ["--netns", str(self.netns)]
        if self.daemonize:
            args.append("--daemonize")
        if self.new_pid_ns:
            args.append("--new-pid-ns")
        return [*args, "--", *firecracker_args]

    def read_pid(self) -> int:
        """The Firecracker pid the jailer wrote (with --new-pid-ns)."""
        try:
            text = self.pid_file.read_text().strip()
        except FileNotFoundError as e:
            raise JailerError(f"jailer pid file {self.pid_file} does not exist") from e
        if not text.isdigit():
            raise JailerError(f"jailer pid file {self.pid_file}: not a pid: {text!r}")
        return int(text)


def place_files(
    spec: JailerSpec, files: Mapping[str, Path], writable: Collection[str] = ()
) -> dict[str, PurePosixPath]:
    """Put each host file at its jail path (the key): a hard link, else a bind mount.

    A regular file on another filesystem than the chroot cannot be linked; it is
    bind-mounted onto an empty file instead (``remove_jail`` unmounts it). A
    device node (a device-mapper drive) gets a node of the same device in the
    jail. Files named in ``writable`` (jail paths) are given to the jail user;
    the others keep their owner, since a chown reaches every link of the inode
    (a shared kernel must stay root's). Returns the jail paths for Firecracker.
    """
    unknown = set(writable) - set(files)
    if unknown:
        raise JailerError(f"writable {sorted(unknown)} are not among the files to place")
    placed: dict[str, PurePosixPath] = {}
    for jail, host in files.items():
        jail_path = PurePosixPath(jail)
        target = spec.host_path(jail_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            _place(host, target)
        except OSError as e:
            raise JailerError(f"placing {host} at {target}: {e.strerror or e}") from e
        if jail in writable:
            os.chown(target, spec.uid, spec.gid)
        placed[jail] = jail_path
    return placed


def _place(host: Path, target: Path) -> None:
    st = host.stat()
    if stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode):
        with contextlib.suppress(FileNotFoundError):
            if target.stat().st_rdev == st.st_rdev:
                return
            target.unlink()
        os.mknod(target, stat.S_IMODE(st.st_mode) | stat.S_IFMT(st.st_mode), st.st_rdev)
        return
    try:
        os.link(host, target)
        return
    except FileExistsError:
        if host.samefile(target):
            return
        raise JailerError(f"{target} exists and is not {host}") from None
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    # Another filesystem: bind the file onto an empty one (no copy of a rootfs).
    target.touch(mode=0o600, exist_ok=False)
    rc = _libc.mount(os.fsencode(host), os.fsencode(target), None, MS_BIND, None)
    if rc != 0:
        err = ctypes.get_errno()
        target.unlink()
        raise OSError(err, f"bind mount: {os.strerror(err)}")


def mounts_under(path: Path, table: Path = mountinfo.SELF) -> list[Path]:
    """Mount points at or below ``path``, deepest first (the order to unmount)."""
    return [m.target for m in mountinfo.under(path, mountinfo.read(table))]


def remove_jail(jail_dir: Path) -> bool:
    """Unmount what was bound into a jail and remove its directory. False: absent."""
    if not jail_dir.exists():
        return False
    for point in mounts_under(jail_dir.resolve()):
        if _libc.umount2(os.fsencode(point), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOENT):
                raise JailerError(f"umount {point}: {os.strerror(err)}")
    shutil.rmtree(jail_dir)
    return True


def jail_socket_dir(spec: JailerSpec) -> Path:
    """The run directory inside the jail, created for the jail user."""
    run = spec.host_path(PurePosixPath("/run"))
    run.mkdir(parents=True, exist_ok=True)
    os.chown(run, spec.uid, spec.gid)
    return run
