"""fcsim's "vCPU": boot the guest rootfs as a container-like process tree.

Run by fcsim as ``python -m wrennd_sim.fcsim.guestboot ...``: joins the guest
network namespace, unshares mount, UTS, IPC and PID namespaces, attaches the
root drive to a loop device (LOOP_CONFIGURE with autoclear) and mounts it
privately, sets the hostname, then forks the image's init as PID 1 of the new
PID namespace, chrooted into the rootfs and moved into the guest's cgroup. It
forwards SIGTERM/SIGINT to init and exits with init's status.

A guest ends with fcsim: when fcsim (its parent) dies, even by SIGKILL, guestboot
gets SIGHUP (PR_SET_PDEATHSIG) and kills init. Whatever way the guest ends, its
root must not stay FIFREEZEd (the agent freezes it before a snapshot): a real
guest's freeze dies with its kernel, but this one is on the host's kernel, where
a frozen superblock outlives its last mount and keeps the loop device, and with
it the drive, busy until the next boot. So guestboot keeps the root open and
thaws it before init is told to stop and again once the guest is gone; that is
why it stays out of the guest's cgroup, which fcsim may kill as a whole.

Failures before init runs are written to the status fd; a successful exec
closes it empty (it is close-on-exec), which is how fcsim knows the guest
booted.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import os
import select
import signal
import socket
import stat
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from wrennd import mountinfo

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_REC = 1 << 14
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
FITHAW = 0xC0045878  # _IOWR('X', 120, int)
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
STOP_POLL = 0.2  # how often a stopping guestboot thaws again (the agent may refreeze)
# The longest a stop waits for its second thaw: PEP 475 resumes a select that a signal
# handler interrupted with the timeout it had, so the idle wait must be bounded too.
IDLE_POLL = 1.0

_libc = ctypes.CDLL(None, use_errno=True)


class BootError(OSError):
    pass


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise BootError(err, f"{what}: {os.strerror(err)}")


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    parent = os.getppid()
    _check(_libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0), "prctl(PDEATHSIG)")
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def loop_config(backing_fd: int, read_only: bool, name: str) -> bytes:
    """struct loop_config: fd, block_size, loop_info64, reserved[8]."""
    flags = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_READ_ONLY if read_only else 0)
    info = struct.pack(
        "=5Q4I64s64s32s2Q", 0, 0, 0, 0, 0, 0, 0, 0, flags, name.encode()[:63], b"", b"", 0, 0
    )
    return struct.pack("=II", backing_fd, 0) + info + bytes(64)


def attach_loop(path: str, read_only: bool) -> tuple[str, int]:
    """A loop device over ``path`` and an open fd on it.

    The device is set to autoclear: it detaches at its last close once
    unmounted, so the caller keeps the fd open until the mount holds it.
    """
    backing = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(16):
            index = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            dev = f"/dev/loop{index}"
            fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.ioctl(fd, LOOP_CONFIGURE, loop_config(backing, read_only, path))
                return dev, fd
            except OSError as e:
                os.close(fd)
                if e.errno != errno.EBUSY:  # taken by someone else meanwhile: next one
                    raise BootError(e.errno, f"LOOP_CONFIGURE {dev} <- {path}: {e.strerror}") from e
        raise BootError(errno.EBUSY, "no free loop device after 16 tries")
    finally:
        os.close(ctl)
        os.close(backing)


def mount_rootfs(dev: str, target: str, read_only: bool) -> None:
    flags = MS_RDONLY if read_only else 0
    rc = _libc.mount(dev.encode(), target.encode(), b"ext4", flags, None)
    _check(rc, f"mount {dev} (ext4) on {target}")


# The device nodes a guest's /dev starts with: (name, char major, minor).
GUEST_DEVICES = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
]
MS_NOSUID = 2


def guest_dev(root: str) -> None:
    """The guest's own /dev: a tmpfs with the basic device nodes.

    A real guest's devtmpfs belongs to its own kernel; this guest shares the
    host's, so a devtmpfs it mounted would be the host's /dev, where a guest
    that writes /dev/zero would replace the host's device node.  The image's
    init leaves an already mounted /dev alone."""
    target = os.path.join(root, "dev")
    os.makedirs(target, exist_ok=True)
    _check(_libc.mount(b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID, b"mode=0755"), "mount /dev")
    for name, major, minor in GUEST_DEVICES:
        os.mknod(os.path.join(target, name), 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(os.path.join(target, name), 0o666)  # mknod's mode passes through the umask
    for name, to in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ):
        os.symlink(to, os.path.join(target, name))


def foreign_loop_mounts(table: list[mountinfo.Mount], keep: str) -> list[Path]:
    """Mount points backed by a loop device, other than ``keep`` and the mounts above it.

    The guest's mount namespace starts as a private copy of the host's. A copy of
    another filesystem's mount keeps that filesystem (and its loop device) alive
    after the host unmounts it, for as long as this guest runs: the host could not
    free its loop device. Deepest first, so each can be detached in turn. ``keep`` is
    resolved first: a jailed guest's run dir is reached through a symlink."""
    kept = Path(os.path.realpath(keep))  # mountinfo names the resolved path
    foreign = [
        m
        for m in table
        if m.source.startswith("/dev/loop") and m.target != kept and m.target not in kept.parents
    ]
    return [m.target for m in mountinfo.deepest_first(foreign)]


def forget_foreign_mounts(keep: str) -> None:
    for target in foreign_loop_mounts(mountinfo.read(), keep):
        if _libc.umount2(os.fsencode(target), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOENT):  # gone with a parent already
                raise BootError(err, f"detach {target} from the guest: {os.strerror(err)}")


@dataclass
class Booted:
    """What guestboot holds while its guest runs."""

    root_fd: int  # the mounted root: keeps the mount reachable for FITHAW
    cgroup_fd: int  # the guest cgroup's cgroup.procs, -1 if none; init joins it


def prepare(args: argparse.Namespace) -> Booted:
    """Everything up to the fork; raises BootError with what failed."""
    cgroup_fd = -1
    if args.cgroup_procs:
        cgroup_fd = os.open(args.cgroup_procs, os.O_WRONLY | os.O_CLOEXEC)
    if args.netns:
        fd = os.open(args.netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.setns(fd, CLONE_NEWNET), f"setns({args.netns})")
        finally:
            os.close(fd)
    flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID
    _check(_libc.unshare(flags), "unshare(mount, uts, ipc, pid)")
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    dev, fd = attach_loop(args.rootfs, args.read_only)
    try:
        mount_rootfs(dev, args.mountpoint, args.read_only)
    finally:
        os.close(fd)  # the mount holds the device now; autoclear detaches it after umount
    root_fd = os.open(args.mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    guest_dev(args.mountpoint)
    forget_foreign_mounts(args.mountpoint)
    socket.sethostname(args.hostname)
    return Booted(root_fd, cgroup_fd)


def thaw(root_fd: int) -> None:
    """FITHAW the guest's root; EINVAL means it was not frozen."""
    try:
        fcntl.ioctl(root_fd, FITHAW, 0)
    except OSError as e:
        if e.errno != errno.EINVAL:
            print(f"guestboot: cannot thaw the guest's root: {e}", file=sys.stderr)


def run_init(args: argparse.Namespace, booted: Booted, status_fd: int) -> None:
    """In the child: PID 1 of the new namespace. Never returns."""
    try:
        die_with_parent()
        if booted.cgroup_fd >= 0:
            os.write(booted.cgroup_fd, b"0")  # "0": the writer itself, before it runs the guest
        os.chroot(args.mountpoint)
        os.chdir("/")
        env = dict(kv.split("=", 1) for kv in args.env)
        os.execve(args.init, [args.init], env)
    except BaseException as e:  # exec failed: report it, do not run Python on as PID 1
        os.write(status_fd, f"cannot start {args.init} in the guest: {e}".encode())
    os._exit(127)


def supervise(child: int, root_fd: int) -> int:
    """Wait for init, thawing the root whenever the guest is told to stop; init's status.

    SIGTERM, fcsim stopping its guest, is forwarded to init once the root is thawed (a
    guest stopping on a frozen root would hang in its sync, unkillable); SIGHUP, fcsim's
    death, kills init. SIGINT (Ctrl-Alt-Del) is only forwarded: init may ignore it and
    run on, and a guest that runs on must stay free to freeze its root."""
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        if signum != signal.SIGINT:
            stopping = True
            thaw(root_fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL if signum == signal.SIGHUP else signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # main() held them until now
    pidfd = os.pidfd_open(child)
    try:
        # Until it is reaped, a stopping guest is thawed again and again: the agent may
        # have been in the middle of a freeze when the stop came.
        while not select.select([pidfd], [], [], STOP_POLL if stopping else IDLE_POLL)[0]:
            if stopping:
                thaw(root_fd)
        _, status = os.waitpid(child, 0)
    finally:
        os.close(pidfd)
    thaw(root_fd)  # the guest is gone: nothing may freeze it again
    return os.waitstatus_to_exitcode(status)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="fcsim-guestboot")
    p.add_argument("--rootfs", required=True)
    p.add_argument("--read-only", action="store_true")
    p.add_argument("--mountpoint", required=True)
    p.add_argument("--netns", default="")
    p.add_argument("--hostname", default="fcsim")
    p.add_argument("--init", default="/sbin/init")
    p.add_argument("--status-fd", type=int, required=True)
    p.add_argument("--cgroup-procs", default="")
    p.add_argument("--env", action="append", default=[])
    args = p.parse_args(argv)
    status_fd = args.status_fd
    os.set_inheritable(status_fd, False)
    try:
        die_with_parent(signal.SIGHUP)
        booted = prepare(args)
    except (OSError, ValueError) as e:
        os.write(status_fd, f"guest boot failed: {e}".encode())
        sys.exit(1)
    # A stop that comes while init is being forked waits for supervise() to handle it.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    child = os.fork()
    if child == 0:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        run_init(args, booted, status_fd)
    os.close(status_fd)
    if booted.cgroup_fd >= 0:
        os.close(booted.cgroup_fd)
    code = supervise(child, booted.root_fd)
    # A PID namespace's init killed by a signal (reboot(2) inside one is SIGHUP/SIGINT).
    sys.exit(128 - code if code < 0 else code)


if __name__ == "__main__":
    main()
