"""A sandbox's VMM under the jailer: its chroot, the files placed there, the paths it sees.

A wrapper around the ordinary launch (``bringup.start_vmm``): the launcher runs
the jailer's command line instead of the VMM's, with the VMM's API socket and
log inside the chroot (``SandboxPaths.jail_root``). The jailer execs the VMM in
its own process (no ``--new-pid-ns``, no ``--daemonize``), so the pid the
launcher watches is the VMM's. Everything the VMM opens is placed in the
chroot first (``vm.jailer.place_files``) and every path in an API request is
the jail's; snapshot files the VMM writes there are linked out afterwards.
``remove`` takes the chroot and the cgroup away; ``cleanup_stale`` does it for
every jail at start-up (no VMM outlives the daemon's restart).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from wrennd.log import kv
from wrennd.vm import cgroup
from wrennd.vm.errors import JailerError
from wrennd.vm.jailer import JailerSpec, place_files, remove_jail
from wrennd.vm.launcher import FirecrackerArgs, VmmFiles

log = logging.getLogger(__name__)

# Where the VMM sees its files (the same for every sandbox: each has its own root).
KERNEL = "/vmlinux"
INITRD = "/initrd"
ROOTFS = "/rootfs"
RUN = "/run"
SNAPSHOT = "/snapshot"
VMSTATE = "/snapshot/vmstate"
PENDING_VMSTATE = "/snapshot/vmstate.pending"
PENDING_MEMFILE = "/snapshot/memfile.pending"


@dataclass(frozen=True)
class JailSettings:
    """How every VMM is jailed (config: jailer_bin, jail_uid, jail_gid, jail_chroot_base,
    jail_cgroup)."""

    jailer_bin: Path
    exec_file: Path
    uid: int
    gid: int
    chroot_base: Path
    parent_cgroup: str

    def spec(
        self, vm_id: str, netns: Path | None = None, cgroups: dict[str, str] | None = None
    ) -> JailerSpec:
        return JailerSpec(
            jailer_bin=self.jailer_bin,
            exec_file=self.exec_file,
            vm_id=vm_id,
            uid=self.uid,
            gid=self.gid,
            chroot_base=self.chroot_base,
            netns=netns,
            new_pid_ns=False,
            cgroups=cgroups or {},
            parent_cgroup=self.parent_cgroup,
        )

    def root_of(self, vm_id: str) -> Path:
        return self.spec(vm_id).chroot_dir


class Jail:
    """One sandbox's jail; ``make`` builds the chroot (blocking: call in a thread)."""

    def __init__(self, spec: JailerSpec, cgroup_root: Path | None) -> None:
        self.spec = spec
        self.cgroup_root = cgroup_root

    @classmethod
    def make(cls, settings: JailSettings, vm_id: str, netns: Path, vcpus: int, mem: int) -> Jail:
        root = cgroup.cgroup2_root()
        available = cgroup.controllers(root) if root is not None else frozenset()
        limits = cgroup.limits(vcpus, mem, available)
        left_out = {"cpu", "memory"} - available
        if left_out:
            log.warning(
                "jail cgroup limits left out: controllers not in the cgroup2 hierarchy",
                extra=kv(sandbox=vm_id, controllers=",".join(sorted(left_out))),
            )
        jail = cls(settings.spec(vm_id, netns, limits), root)
        jail.remove()  # a leftover of an earlier run of this sandbox
        try:
            jail.prepare()
        except BaseException:
            jail.remove()
            raise
        return jail

    @property
    def root(self) -> Path:
        return self.spec.chroot_dir

    @property
    def cgroup_dir(self) -> Path | None:
        if self.cgroup_root is None:
            return None
        return self.spec.cgroup_dir(self.cgroup_root)

    def prepare(self) -> None:
        """The chroot with the run and snapshot directories the VMM writes to."""
        for jail_dir in (RUN, SNAPSHOT):
            path = self.spec.host_path(PurePosixPath(jail_dir))
            path.mkdir(parents=True, exist_ok=True, mode=0o750)
            os.chown(path, self.spec.uid, self.spec.gid)

    def own_files(self, files: VmmFiles) -> None:
        """Create the VMM's log and metrics files as the jail user (opened without O_CREAT)."""
        for path in (files.log_file, files.metrics_file):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            os.fchown(fd, self.spec.uid, self.spec.gid)
            os.close(fd)

    def own(self, host: Path) -> None:
        os.chown(host, self.spec.uid, self.spec.gid)

    def path(self, host: Path) -> str:
        """The path the jailed VMM sees for a host path inside its chroot."""
        return "/" + str(host.relative_to(self.root))

    def place(self, files: dict[str, Path], writable: frozenset[str] = frozenset()) -> None:
        place_files(self.spec, files, writable)

    def boot_files(self, kernel: Path, initrd: Path | None, drive: Path) -> tuple[str, ...]:
        """Place what a boot opens; the jail paths of the kernel, the initrd ('' if none)
        and the root drive, for the boot-source and drive requests."""
        placed = {KERNEL: kernel, ROOTFS: drive}
        if initrd is not None:
            placed[INITRD] = initrd
        self.place(placed, frozenset({ROOTFS}))
        return KERNEL, "" if initrd is None else INITRD, ROOTFS

    def restore_files(self, vmstate: Path, drive: Path, uffd_socket: Path) -> tuple[str, ...]:
        """Place what a snapshot load opens (the vmstate, and the root drive at the path the
        snapshot recorded); the jail paths of those and of the UFFD socket."""
        placed = {VMSTATE: vmstate, ROOTFS: drive}
        self.place(placed, frozenset(placed))
        return VMSTATE, self.path(uffd_socket), ROOTFS

    def argv(self, args: FirecrackerArgs) -> list[str]:
        """The jailer's command line; it passes ``--id`` to the VMM itself."""
        files = args.files
        flags = args.flags(
            api_socket=Path(self.path(files.api_socket)), log_file=Path(self.path(files.log_file))
        )
        i = flags.index("--id")
        return self.spec.argv(flags[:i] + flags[i + 2 :])

    def take_out(self, jail_path: str, host: Path) -> None:
        """Link a file the VMM wrote in the jail to ``host`` and drop the jail's name."""
        inside = self.spec.host_path(PurePosixPath(jail_path))
        host.unlink(missing_ok=True)
        os.link(inside, host)
        inside.unlink()

    def remove(self, settle: float = 0.0) -> None:
        """Kill what still runs in the jail, remove its cgroup and its chroot.

        ``settle``: seconds the jail's other processes get to exit by themselves once its
        VMM is gone (fcsim's root guest helper stops and thaws its guest then)."""
        kill_jailed(self.spec.vm_id)
        cg = self.cgroup_dir
        if cg is not None and cgroup.remove(cg, settle=settle):
            log.info("jail cgroup removed", extra=kv(cgroup=cg))
        if remove_jail(self.spec.jail_dir):
            log.info("jail removed", extra=kv(jail=self.spec.jail_dir))


def marker(vm_id: str) -> str:
    """The word the jailer puts on its VMM's command line: who that VMM is."""
    return f"--id={vm_id}"


def existing(settings: JailSettings, vm_id: str) -> Jail:
    """The jail of a VMM that outlived the daemon that made it (to release it later)."""
    return Jail(settings.spec(vm_id), cgroup.cgroup2_root())


def kill_jailed(vm_id: str) -> list[int]:
    """SIGKILL every process the jailer started with this id (``--id=<id>``).

    The jailer passes the id to the VMM in that one-word form; a process that
    exited meanwhile is skipped."""
    needle = os.fsencode(marker(vm_id))
    killed = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in (proc / "cmdline").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
    return killed


def cleanup_stale(settings: JailSettings, keep: frozenset[str] = frozenset()) -> list[str]:
    """Remove every jail (chroot and cgroup) of this daemon's VMMs but ``keep``."""
    base = settings.chroot_base / settings.exec_file.name
    ids = {p.name for p in base.iterdir()} if base.is_dir() else set()
    root = cgroup.cgroup2_root()
    parent = root / settings.parent_cgroup if root is not None else None
    if parent is not None and parent.is_dir():
        ids |= {p.name for p in parent.iterdir() if p.is_dir()}
    removed = []
    for vm_id in sorted(ids - keep):
        try:
            spec = settings.spec(vm_id)
        except JailerError:  # not a jail id: not ours
            continue
        Jail(spec, root).remove()
        removed.append(vm_id)
    return removed
