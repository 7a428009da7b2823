"""fcsim's guest, run as root beside a jailed fcsim (fcsim-jailer's compromise).

A jailed fcsim is an unprivileged process in a chroot: it cannot attach loop
devices, mount, make namespaces or bridge a TAP, which its stand-in guest needs
(a real Firecracker's guest runs inside KVM and needs none of it). So
fcsim-jailer forks this helper before it drops privileges: it keeps root and
the host's mount namespace, shares the jail's network namespace and cgroup,
and runs the ``GuestRunner`` on fcsim's behalf. ``RemoteGuest`` is fcsim's end:
one JSON message per request over a SEQPACKET socket pair, one reply each,
plus an ``exit`` event when the guest stops by itself. Drive paths arrive as
the jail sees them and are resolved inside the chroot (never outside it, even
through a symlink the jailed user made). When fcsim goes away the helper stops
the guest and exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from wrennd_sim.fcsim.vmmlog import VmmLog

if TYPE_CHECKING:
    from wrennd_sim.fcsim.machine import Machine

MAX_MESSAGE = 1 << 20


@dataclass
class MachineView:
    """The parts of fcsim's Machine a guest boot reads."""

    drives: dict[str, dict[str, Any]]
    boot_source: dict[str, Any] | None
    network_interfaces: dict[str, dict[str, Any]]


def in_chroot(chroot: Path, jail_path: str) -> str:
    """The host path of ``jail_path`` inside ``chroot``; refuses a way out."""
    real = os.path.realpath(chroot / jail_path.lstrip("/"))
    root = os.path.realpath(chroot)
    if os.path.commonpath([real, root]) != root:
        raise PermissionError(f"{jail_path} leads out of the jail")
    return real


class RemoteGuest:
    """fcsim's machine.Guest when the guest runs in the helper."""

    def __init__(self, fd: int, log: VmmLog, on_exit: Callable[[int], None]) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        self.log = log
        self.on_exit = on_exit
        self._replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while data := await loop.sock_recv(self.sock, MAX_MESSAGE):
            msg = json.loads(data)
            if msg.get("event") == "exit":
                self.on_exit(int(msg["rc"]))
            else:
                self._replies.put_nowait(msg)
        self._replies.put_nowait({"error": "the guest helper is gone"})

    async def _call(self, op: str, **body: Any) -> None:
        if self._reader is None:
            self._reader = asyncio.ensure_future(self._read())
        async with self._lock:
            await asyncio.get_running_loop().sock_sendall(
                self.sock, json.dumps({"op": op, **body}).encode()
            )
            reply = await self._replies.get()
        if reply.get("error"):
            raise OSError(reply["error"])

    async def boot(self, machine: Machine) -> None:
        await self._call(
            "boot",
            drives=machine.drives,
            boot_source=machine.boot_source,
            network_interfaces=machine.network_interfaces,
        )

    async def freeze(self) -> None:
        await self._call("freeze")

    async def thaw(self) -> None:
        await self._call("thaw")

    def ctrl_alt_del(self) -> None:
        task = asyncio.ensure_future(self._call("ctrl_alt_del"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def shutdown(self) -> None:
        await self._call("shutdown")


async def serve(sock: socket.socket, jail_dir: Path, chroot: Path) -> None:
    from wrennd_sim.fcsim.guest import GuestRunner

    loop = asyncio.get_running_loop()
    log = VmmLog("guest-helper", "Info", True)
    pending: set[asyncio.Task[None]] = set()

    def on_exit(rc: int) -> None:
        event = json.dumps({"event": "exit", "rc": rc}).encode()
        task = asyncio.ensure_future(loop.sock_sendall(sock, event))
        pending.add(task)
        task.add_done_callback(pending.discard)

    runner = GuestRunner(jail_dir, log, on_exit)
    try:
        while data := await loop.sock_recv(sock, MAX_MESSAGE):
            msg = json.loads(data)
            error = None
            try:
                await _handle(runner, msg, chroot)
            except Exception as e:
                error = str(e) or type(e).__name__
            await loop.sock_sendall(sock, json.dumps({"reply": msg["op"], "error": error}).encode())
    except ConnectionError:
        pass
    finally:
        await runner.shutdown()


async def _handle(runner: Any, msg: dict[str, Any], chroot: Path) -> None:
    op = msg["op"]
    if op == "boot":
        drives = {
            key: {**d, "path_on_host": in_chroot(chroot, d["path_on_host"])}
            for key, d in msg["drives"].items()
        }
        view = MachineView(drives, msg["boot_source"], msg["network_interfaces"])
        await runner.boot(cast("Machine", view))
    elif op in ("freeze", "thaw", "shutdown"):
        await getattr(runner, op)()
    elif op == "ctrl_alt_del":
        runner.ctrl_alt_del()
    else:
        raise ValueError(f"unknown guest helper request {op!r}")


def run_helper(fd: int, jail_dir: Path, chroot: Path) -> None:
    """The helper process's whole life (fcsim-jailer forks it)."""
    import uvloop

    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    with sock:
        uvloop.run(serve(sock, jail_dir, chroot))
