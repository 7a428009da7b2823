"""``fcsim-jailer``: Firecracker's jailer, for fcsim, doing what the jailer documents.

Same command line as the jailer (docs/jailer.md in Firecracker) and the same
steps in the same order: validate the id and the exec file (its name must
contain "firecracker"); close inherited fds; build
``<chroot base>/<exec file name>/<id>/root`` and copy the exec file into it;
join ``--netns``; set ``--resource-limit`` (default no-file=2048); create the
cgroup v2 ``<root>/<parent cgroup>/<id>`` with the ``--cgroup`` values and move
in (without ``--cgroup``: into the parent cgroup if it exists); a new mount
namespace with ``pivot_root`` into the chroot; ``/dev/net/tun``, ``/dev/kvm``
(if the host has it), ``/dev/urandom`` and ``/dev/userfaultfd`` (if the host
has it) made with mknod and given, with the root, to ``uid:gid``;
``--daemonize`` (setsid, stdio on /dev/null); ``--new-pid-ns`` (the VMM forked
as pid 1 of a new PID namespace, its pid in ``<exec file name>.pid``) or else
the pid file with our own pid; then drop to ``uid``/``gid`` with an empty
environment and exec ``/<exec file name> --id=<id> --start-time-us=..
--start-time-cpu-us=.. <args after -->``.

Two fcsim-only compromises (Firecracker needs neither), both kept outside
what the jailed VMM can reach:

* fcsim is a Python program, not a static binary: the interpreter, the
  standard library and the installed packages are bind-mounted read-only into
  the jail (in its private mount namespace, so nothing is left on the host).
* fcsim's guest is the image's init in namespaces (loop mount, namespaces,
  TAP bridging, a freezer cgroup), which needs root. Before the mount
  namespace and the privilege drop the jailer forks a *guest helper*
  (``guesthelper``) that stays root, outside the chroot but in the jail's
  network namespace and cgroup, and runs the guest on the jailed fcsim's
  behalf over a socket pair (``--guest-helper-fd``). A real Firecracker runs
  its guest itself, inside KVM, unprivileged.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import resource
import shutil
import socket
import stat
import sys
import time
from pathlib import Path

import wrennd
import wrennd_sim
from wrennd import mountinfo
from wrennd_sim.fcsim import FIRECRACKER_VERSION

ID_RE = re.compile(r"[A-Za-z0-9-]{1,64}")
CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 1 << 19
MNT_DETACH = 2
SYS_PIVOT_ROOT = 155  # x86_64
RLIMITS = {"fsize": resource.RLIMIT_FSIZE, "no-file": resource.RLIMIT_NOFILE}
DEFAULT_NOFILE = 2048

_libc = ctypes.CDLL(None, use_errno=True)


class JailError(Exception):
    pass


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise JailError(f"{what}: {os.strerror(err)}")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    ours, extra = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :])
        if "--" in argv
        else (
            argv,
            [],
        )
    )
    p = argparse.ArgumentParser(prog="fcsim-jailer", description="Firecracker's jailer, for fcsim")
    p.add_argument("--id", required=True)
    p.add_argument("--exec-file", required=True, type=Path)
    p.add_argument("--uid", required=True, type=int)
    p.add_argument("--gid", required=True, type=int)
    p.add_argument("--cgroup-version", default="1", choices=("1", "2"))
    p.add_argument("--cgroup", action="append", default=[])
    p.add_argument("--parent-cgroup")
    p.add_argument("--chroot-base-dir", default=Path("/srv/jailer"), type=Path)
    p.add_argument("--netns", type=Path)
    p.add_argument("--resource-limit", action="append", default=[])
    p.add_argument("--daemonize", action="store_true")
    p.add_argument("--new-pid-ns", action="store_true")
    args = p.parse_args(ours)
    if not ID_RE.fullmatch(args.id):
        p.error(f"--id {args.id!r}: expected 1-64 of [A-Za-z0-9-]")
    if not args.exec_file.is_file():
        p.error(f"--exec-file {args.exec_file}: not a file")
    if "firecracker" not in args.exec_file.name:
        p.error(f"--exec-file {args.exec_file}: the file name must contain 'firecracker'")
    if args.cgroup and args.cgroup_version != "2":
        p.error("fcsim-jailer creates cgroups in a v2 hierarchy only: --cgroup-version 2")
    return args, extra


def pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise JailError(f"--{what} {item!r}: expected <name>=<value>")
        out[key] = value
    return out


def set_limits(values: dict[str, str]) -> None:
    values = {"no-file": str(DEFAULT_NOFILE), **values}
    # Every name is checked before any limit is set: a bad one changes nothing.
    for key in values:
        if key not in RLIMITS:
            raise JailError(f"--resource-limit {key}: expected one of {', '.join(RLIMITS)}")
    for key, value in values.items():
        resource.setrlimit(RLIMITS[key], (int(value), int(value)))


def cgroup2_root() -> Path:
    root = mountinfo.of_type("cgroup2", mountinfo.read())
    if root is None:
        raise JailError("no cgroup2 hierarchy is mounted")
    return root


def setup_cgroup(parent: str, vm_id: str, values: dict[str, str]) -> None:
    """Create ``<root>/<parent>/<id>`` with the controllers its files need, write the
    values, move in. Without values (v2): move into the parent cgroup if it exists."""
    root = cgroup2_root()
    if not values:
        if (root / parent / "cgroup.procs").exists():
            (root / parent / "cgroup.procs").write_text(str(os.getpid()))
        return
    needed = sorted({key.split(".", 1)[0] for key in values})
    available = (root / "cgroup.controllers").read_text().split()
    missing = [c for c in needed if c not in available]
    if missing:
        raise JailError(f"cgroup controllers {missing} are not in the cgroup2 hierarchy {root}")
    path = root
    for part in [*Path(parent).parts, vm_id]:
        enabled = (path / "cgroup.subtree_control").read_text().split()
        for ctrl in needed:
            if ctrl not in enabled:
                (path / "cgroup.subtree_control").write_text(f"+{ctrl}")
        path = path / part
        path.mkdir(exist_ok=True)
    for key, value in values.items():
        (path / key).write_text(value)
    (path / "cgroup.procs").write_text(str(os.getpid()))


def join_netns(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"setns({path})")
    finally:
        os.close(fd)


def python_dirs() -> list[Path]:
    """What the interpreter and fcsim need to run, as the fewest top directories."""
    wanted = {Path("/usr"), Path(sys.base_prefix), Path(sys.prefix)}
    for pkg in (wrennd, wrennd_sim):
        wanted.add(Path(pkg.__file__ or "").resolve().parent.parent)
    real = sorted({p.resolve() for p in wanted} | wanted, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for p in real:
        if p.is_dir() and not any(k == p or k in p.parents for k in kept):
            kept.append(p)
    return kept


def enter_chroot(chroot: Path, binds: list[Path]) -> None:
    """A private mount namespace whose root is the chroot, with ``binds`` read-only."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(None, b"/", None, MS_SLAVE | MS_REC, None), "make / a slave mount")
    c = os.fsencode(chroot)
    _check(_libc.mount(c, c, None, MS_BIND | MS_REC, None), f"bind {chroot}")
    for link in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/") / link
        if host.is_symlink() and not (chroot / link).is_symlink():
            os.symlink(os.readlink(host), chroot / link)
    for src in binds:
        dst = chroot / src.relative_to("/")
        dst.mkdir(parents=True, exist_ok=True)
        d = os.fsencode(dst)
        _check(_libc.mount(os.fsencode(src), d, None, MS_BIND | MS_REC, None), f"bind {src}")
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY
        _check(_libc.mount(None, d, None, flags, None), f"read-only {dst}")
    os.chdir(chroot)
    _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "unmount the old root")
    os.chroot(".")
    os.chdir("/")


def misc_minor(name: str) -> int | None:
    for line in Path("/proc/misc").read_text().splitlines():
        minor, _, dev = line.strip().partition(" ")
        if dev == name:
            return int(minor)
    return None


def make_devices(uid: int, gid: int, kvm: bool, uffd_minor: int | None) -> None:
    devices = [("/dev/net/tun", 10, 200), ("/dev/urandom", 1, 9)]
    if kvm:
        devices.append(("/dev/kvm", 10, 232))
    if uffd_minor is not None:
        devices.append(("/dev/userfaultfd", 10, uffd_minor))
    for path, major, minor in devices:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(major, minor))
        os.chown(path, uid, gid)
    os.chown("/", uid, gid)


def start_guest_helper(jail_dir: Path, chroot: Path) -> int:
    """Fork the root guest helper (see the module doc); the fd fcsim talks to it on."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        ours.close()
        if os.fork() != 0:  # not fcsim's child: it is reaped by whoever reaps orphans
            os._exit(0)
        from wrennd_sim.fcsim.guesthelper import run_helper

        try:
            run_helper(theirs.detach(), jail_dir, chroot)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    theirs.close()
    fd = ours.detach()
    os.set_inheritable(fd, True)
    return fd


def daemonize(dev_null: int) -> None:
    if os.fork() != 0:
        os._exit(0)
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    for fd in (0, 1, 2):
        os.dup2(dev_null, fd)


def run(args: argparse.Namespace, extra: list[str]) -> None:
    started_us, cpu_us = time.time_ns() // 1000, time.process_time_ns() // 1000
    os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    name = args.exec_file.name
    jail_dir = args.chroot_base_dir / name / args.id
    chroot = jail_dir / "root"
    # The jail user must reach the tree built for it whatever umask the daemon runs
    # with (077); the VMM gets the daemon's umask back before it runs.
    inherited_umask = os.umask(0o022)
    chroot.mkdir(parents=True, exist_ok=True)
    for d in (jail_dir.parent, jail_dir, chroot):
        d.chmod(0o755)
    shutil.copy2(args.exec_file, chroot / name)
    if args.netns is not None:
        join_netns(args.netns)
    set_limits(pairs(args.resource_limit, "resource-limit"))
    if args.cgroup_version == "2":
        setup_cgroup(args.parent_cgroup or name, args.id, pairs(args.cgroup, "cgroup"))
    helper_fd = start_guest_helper(jail_dir, chroot)
    dev_null = os.open("/dev/null", os.O_RDWR) if args.daemonize else -1
    kvm, uffd_minor = os.path.exists("/dev/kvm"), misc_minor("userfaultfd")
    enter_chroot(chroot, python_dirs())
    make_devices(args.uid, args.gid, kvm, uffd_minor)
    if args.daemonize:
        daemonize(dev_null)
    if args.new_pid_ns:
        _check(_libc.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
        child = os.fork()
        if child != 0:
            Path(f"/{name}.pid").write_text(str(child))
            os._exit(0)
    else:
        Path(f"/{name}.pid").write_text(str(os.getpid()))
    os.umask(inherited_umask)
    os.setgroups([])
    os.setresgid(args.gid, args.gid, args.gid)
    os.setresuid(args.uid, args.uid, args.uid)
    cpu_us = time.process_time_ns() // 1000 - cpu_us
    argv = [f"/{name}", f"--id={args.id}", f"--start-time-us={started_us}"]
    argv += [f"--start-time-cpu-us={cpu_us}", *extra, "--guest-helper-fd", str(helper_fd)]
    os.execve(f"/{name}", argv, {})


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--version"]:
        print(f"Jailer v{FIRECRACKER_VERSION} (fcsim-jailer)")
        return
    args, extra = parse_args(argv)
    try:
        run(args, extra)
    except (JailError, OSError) as e:
        print(f"fcsim-jailer: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
