"""fcsim's guest: the root drive booted as a process tree, networked through the TAP.

There is no guest kernel. At boot fcsim bridges the TAP named in
network-interfaces to a fresh guest network namespace (the network helper's
guest stand-in, holding the address from the kernel ``ip=`` argument) and
starts ``wrennd_sim.fcsim.guestboot``, which mounts the root drive and runs the
image's init as PID 1 of new mount/PID/UTS/IPC namespaces, chrooted, in that
network namespace. The guest's processes live in their own cgroup (v2), which
a pause freezes and a resume thaws. A guest does not survive fcsim: after a
snapshot load it is booted again from the restored rootfs when the VM first
runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wrennd import mountinfo
from wrennd_sim.fcsim.vmmlog import VmmLog

if TYPE_CHECKING:
    from wrennd_sim.fcsim.machine import Machine
    from wrennd_sim.guest_standin import GuestStandIn

BOOT_TIMEOUT = 20.0
STOP_GRACE = 5.0


@dataclass(frozen=True)
class BootArgs:
    """What fcsim reads from the kernel command line."""

    address: ipaddress.IPv4Interface | None = None
    gateway: ipaddress.IPv4Address | None = None
    hostname: str = "fcsim"
    device: str = "eth0"
    init: str = "/sbin/init"
    env: dict[str, str] = field(default_factory=dict)


def parse_boot_args(cmdline: str) -> BootArgs:
    """``ip=client:server:gw:netmask:hostname:device:autoconf``, ``init=``, ``wrenn.k=v``."""
    fields: dict[str, Any] = {"env": {}}
    for word in cmdline.split():
        key, sep, value = word.partition("=")
        if not sep:
            continue
        if key == "ip":
            parts = (value.split(":") + [""] * 7)[:7]
            client, _server, gw, mask, host, dev = parts[:6]
            if client and mask:
                fields["address"] = ipaddress.IPv4Interface(f"{client}/{mask}")
            if gw:
                fields["gateway"] = ipaddress.IPv4Address(gw)
            if host:
                fields["hostname"] = host
            if dev:
                fields["device"] = dev
        elif key == "init":
            fields["init"] = value
        elif key.startswith("wrenn."):
            fields["env"]["WRENN_" + key[len("wrenn.") :].upper()] = value
    return BootArgs(**fields)


def guest_netns_name(own: Path) -> str:
    """``<sandbox namespace>-g`` when fcsim runs in a named namespace (the network
    manager's name for a guest namespace, so its startup cleanup knows a stale
    one), else ``fcsim-<pid>-g``."""
    ino = own.stat().st_ino
    with contextlib.suppress(OSError):
        for entry in Path("/run/netns").iterdir():
            with contextlib.suppress(OSError):
                if entry.stat().st_ino == ino:
                    return f"{entry.name}-g"
    return f"fcsim-{os.getpid()}-g"


def _cgroup2_root() -> Path:
    root = mountinfo.of_type("cgroup2", mountinfo.read())
    if root is None:
        raise OSError("no cgroup2 hierarchy is mounted: fcsim needs it to freeze the guest")
    return root


def _own_cgroup() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise OSError("this process is in no cgroup2 cgroup")


class GuestRunner:
    """Implements machine.Guest for one fcsim process."""

    def __init__(self, run_dir: Path, log: VmmLog, on_exit: Callable[[int], None]) -> None:
        self.run_dir = run_dir
        self.log = log
        self.on_exit = on_exit
        self.cgroup: Path | None = None
        self.standin: GuestStandIn | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def mountpoint(self) -> Path:
        return self.run_dir / f"guest-root-{os.getpid()}"

    async def boot(self, machine: Machine) -> None:
        root = next((d for d in machine.drives.values() if d["is_root_device"]), None)
        if root is None:
            self.log.info("no root drive: the guest has nothing to run")
            return
        boot = parse_boot_args((machine.boot_source or {}).get("boot_args", ""))
        try:
            netns = await self._network(machine, boot)
            self.cgroup = self._make_cgroup()
            await self._spawn(root, boot, netns)
        except BaseException:
            await self.shutdown()
            raise

    async def _network(self, machine: Machine, boot: BootArgs) -> Path | None:
        if not machine.network_interfaces:
            return None
        from wrennd_sim.guest_standin import GuestStandIn

        iface = next(iter(machine.network_interfaces.values()))
        kw: dict[str, Any] = {"sandbox_tap": iface["host_dev_name"], "guest_ifname": boot.device}
        if boot.address is not None:
            kw["guest_address"] = boot.address
        if boot.gateway is not None:
            kw["gateway"] = boot.gateway
        own = Path(f"/proc/{os.getpid()}/ns/net")
        self.standin = await GuestStandIn.start(own, guest_netns_name(own), **kw)
        return self.standin.guest_netns_path

    def _make_cgroup(self) -> Path:
        parent = _cgroup2_root() / _own_cgroup().lstrip("/")
        _reap_orphans(parent, self.log)
        cg = parent / f"fcsim-guest-{os.getpid()}"
        cg.mkdir()
        return cg

    async def _spawn(self, root: dict[str, Any], boot: BootArgs, netns: Path | None) -> None:
        self.mountpoint.mkdir(exist_ok=True)
        assert self.cgroup is not None
        argv = [
            sys.executable,
            "-m",
            "wrennd_sim.fcsim.guestboot",
            "--rootfs",
            root["path_on_host"],
            "--mountpoint",
            str(self.mountpoint),
            "--hostname",
            boot.hostname,
            "--init",
            boot.init,
            "--cgroup-procs",
            str(self.cgroup / "cgroup.procs"),
            "--netns",
            str(netns or ""),
        ]
        if root.get("is_read_only"):
            argv.append("--read-only")
        for key, value in sorted(boot.env.items()):
            argv += ["--env", f"{key}={value}"]
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, "--status-fd", str(w), pass_fds=(w,), stdin=asyncio.subprocess.DEVNULL
            )
        finally:
            os.close(w)
        try:
            message = await asyncio.wait_for(asyncio.to_thread(_read_all, r), BOOT_TIMEOUT)
        finally:
            os.close(r)
        if message:
            raise OSError(message)
        self.log.info(f"guest booted from {root['path_on_host']} (init {boot.init})")
        self._watch = asyncio.ensure_future(self._wait_exit())

    async def _wait_exit(self) -> None:
        assert self.proc is not None
        rc = await self.proc.wait()
        if not self._stopping:
            self.log.info(f"guest exited ({rc}): the VM is gone")
            self.on_exit(rc)

    async def freeze(self) -> None:
        await self._set_frozen(True)

    async def thaw(self) -> None:
        await self._set_frozen(False)

    async def _set_frozen(self, frozen: bool) -> None:
        if self.cgroup is None:
            return
        cg = self.cgroup
        (cg / "cgroup.freeze").write_text("1" if frozen else "0")
        for _ in range(500):
            if _reached(cg, frozen):
                return
            await asyncio.sleep(0.01)
        if frozen:
            # Never leave a half-frozen guest behind: the agent may be among the frozen.
            (cg / "cgroup.freeze").write_text("0")
        want = "stopped" if frozen else "running"
        raise OSError(f"the guest (cgroup {cg}) was not {want} within 5 s: {_busy(cg)}")

    def ctrl_alt_del(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(2)  # SIGINT: what the kernel sends init on Ctrl-Alt-Del

    async def shutdown(self) -> None:
        self._stopping = True
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(OSError):
                await self._set_frozen(False)
            self.proc.terminate()  # guestboot thaws the guest's root first (see there)
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_GRACE)
            except TimeoutError:
                self.log.warning("guest did not stop in time: killing its cgroup")
        try:
            if self.cgroup is not None:
                await self._kill_cgroup(self.cgroup)
            if self.proc is not None:
                await self.proc.wait()
            if self.cgroup is not None:
                # Only now: a killed child not yet reaped still populates the cgroup.
                await _remove_cgroup(self.cgroup)
                self.cgroup = None
            if self._watch is not None:
                await asyncio.gather(self._watch, return_exceptions=True)
        finally:
            if self.standin is not None:
                await self.standin.close()
                self.standin = None
            with contextlib.suppress(OSError):
                self.mountpoint.rmdir()

    @staticmethod
    async def _kill_cgroup(cg: Path) -> None:
        with contextlib.suppress(OSError):
            (cg / "cgroup.freeze").write_text("0")
        for _ in range(500):
            if not (cg / "cgroup.procs").read_text().strip():
                break
            (cg / "cgroup.kill").write_text("1")
            await asyncio.sleep(0.01)


# Where a task waits once the cgroup freezer (or a stop signal) caught it.
_TRAPPED = frozenset({"get_signal", "do_freezer_trap", "do_signal_stop"})


def _unstopped(cg: Path) -> list[str]:
    """The guest's threads that may still run user code.

    A thread in uninterruptible sleep (D) counts as stopped: it cannot be frozen
    until its system call returns, but the freeze traps it before it runs another
    instruction of its own.  A writer blocked on the guest's FIFREEZEd root waits
    there until the resume thaws it; Firecracker stops a vCPU whatever its guest
    tasks are doing, and this is fcsim's equivalent.
    """
    out = []
    for tid in (cg / "cgroup.threads").read_text().split():
        try:
            stat = Path(f"/proc/{tid}/stat").read_text()
            state = stat[stat.rindex(")") + 2]
            wchan = Path(f"/proc/{tid}/wchan").read_text().strip()
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
        if state in "DZX" or (state in "St" and wchan in _TRAPPED):
            continue
        out.append(f"{tid} ({state} {wchan or '?'})")
    return out


def _reached(cg: Path, frozen: bool) -> bool:
    lines = (cg / "cgroup.events").read_text().splitlines()
    if f"frozen {int(frozen)}" in lines:
        return True
    return frozen and not _unstopped(cg)


def _busy(cg: Path) -> str:
    with contextlib.suppress(OSError):
        return "still running: " + ", ".join(_unstopped(cg)[:8])
    return "its tasks could not be read"


def reap_orphans(log: VmmLog) -> None:
    """``fcsim --reap-orphans``: what a daemon runs at start-up, since it does not know
    fcsim's cgroups (it drives fcsim as it would Firecracker)."""
    _reap_orphans(_cgroup2_root() / _own_cgroup().lstrip("/"), log)


def _running(pid: int) -> bool:
    """Alive and not a zombie: a killed fcsim whose parent has not reaped it yet (a VMM
    outlives the daemon, so its parent may be a PID 1 that reaps late) is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _reap_orphans(parent: Path, log: VmmLog) -> None:
    """Kill and remove the guest cgroups of fcsim processes that are gone (SIGKILLed:
    their guests kept running, holding their layer mounted)."""
    for cg in parent.glob("fcsim-guest-*"):
        pid = cg.name.rsplit("-", 1)[1]
        if not pid.isdigit() or _running(int(pid)):
            continue
        try:
            with contextlib.suppress(OSError):
                (cg / "cgroup.freeze").write_text("0")
            for _ in range(200):
                if not (cg / "cgroup.procs").read_text().strip():
                    break
                (cg / "cgroup.kill").write_text("1")
                time.sleep(0.01)
            for _ in range(200):
                try:
                    _remove_dir(cg)
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        raise
                    time.sleep(0.01)
            log.info(f"removed the guest cgroup {cg} of a killed fcsim")
        except OSError as e:
            log.warning(f"cannot remove the guest cgroup {cg} of a killed fcsim: {e}")


async def _remove_cgroup(cg: Path, limit: float = 2.0) -> None:
    """rmdir, retried while the kernel still counts exiting tasks in it (EBUSY)."""
    for _ in range(int(limit / 0.01)):
        try:
            _remove_dir(cg)
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
        await asyncio.sleep(0.01)
    _remove_dir(cg)


def _remove_dir(path: Path) -> None:
    path.rmdir()


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")
