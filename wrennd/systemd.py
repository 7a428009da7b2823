"""The systemd protocols the daemon speaks: socket activation, sd_notify and its fd store.

Both are small, stable, documented wire protocols (sd_listen_fds(3),
sd_notify(3)); implementing them directly avoids linking libsystemd
(systemd-python needs its headers to build) for a dozen lines of code.
"""

from __future__ import annotations

import array
import errno
import logging
import os
import socket
import stat
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field

from wrennd.log import kv

log = logging.getLogger("wrennd.systemd")
LISTEN_FDS_START = 3


class ActivationError(RuntimeError):
    """The sockets systemd passed are not what the daemon can serve on."""


# FDNAMEs the daemon gives what it keeps in systemd's fd store (one fd per name);
# every other passed fd is a socket of socket activation.
STORED_PREFIXES = ("uffd-", "uffdpeer-")


@dataclass
class Inherited:
    """The fds systemd passed: listening sockets, and fd-store fds by FDNAME."""

    sockets: list[int] = field(default_factory=list)
    stored: dict[str, int] = field(default_factory=dict)


def inherited_fds(env: MutableMapping[str, str] | None = None) -> Inherited:
    """Parse LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES (sd_listen_fds_with_names(3)) once.

    LISTEN_PID must name this process (the variables may have been inherited
    by accident); the variables are removed so child processes do not see them.
    Every passed fd is made close-on-exec: VMMs must not inherit them."""
    env = os.environ if env is None else env
    pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    names_raw = env.get("LISTEN_FDNAMES")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)
    out = Inherited()
    if pid is None or count is None:
        return out
    if not pid.isdigit() or int(pid) != os.getpid():
        log.warning("ignoring LISTEN_FDS meant for another process", extra=kv(listen_pid=pid))
        return out
    if not count.isdigit():
        raise ActivationError(f"LISTEN_FDS={count!r} is not a number")
    n = int(count)
    names = names_raw.split(":") if names_raw else []
    for i in range(n):
        fd = LISTEN_FDS_START + i
        name = names[i] if i < len(names) else ""
        if not name.startswith(STORED_PREFIXES):
            out.sockets.append(fd)
            continue
        try:
            os.set_inheritable(fd, False)
        except OSError as e:
            log.warning("stored fd not open", extra=kv(fd=fd, name=name, error=e.strerror))
            continue
        out.stored[name] = fd
    return out


def listen_socket(env: MutableMapping[str, str] | None = None) -> socket.socket | None:
    """The listening AF_UNIX stream socket passed by systemd, or None when not activated."""
    return socket_of(inherited_fds(env).sockets)


def socket_of(fds: list[int]) -> socket.socket | None:
    """The one listening AF_UNIX stream socket among the activation fds (none: None)."""
    if not fds:
        return None
    if len(fds) != 1:
        raise ActivationError(f"LISTEN_FDS={len(fds)}: wrennd serves exactly one socket")
    fd = fds[0]
    try:
        mode = os.fstat(fd).st_mode
    except OSError as e:
        raise ActivationError(f"LISTEN_FDS=1 but fd {fd} is not open: {e.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise ActivationError(f"fd {fd} passed by systemd is not a socket")
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ActivationError(f"fd {fd} passed by systemd is not an AF_UNIX stream socket")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ActivationError(f"fd {fd} passed by systemd is not listening")
    os.set_inheritable(fd, False)
    sock.setblocking(False)
    return sock


class Notifier:
    """sd_notify: datagrams to $NOTIFY_SOCKET; silently nothing when not under systemd."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        if address:
            # "@name" is an abstract-namespace socket.
            self._target = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        # Not passed on to child processes (Firecracker must not talk to systemd).
        return cls(env.pop("NOTIFY_SOCKET", None))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (``ready=1`` becomes ``READY=1``); False if not delivered."""
        if self._sock is None:
            return False
        message = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            self._sock.sendto(message, self._target)
        except OSError as e:
            # Non-blocking: a full or vanished systemd socket must not stall the daemon.
            level = logging.DEBUG if e.errno == errno.EAGAIN else logging.WARNING
            log.log(level, "sd_notify failed", extra=kv(error=e.strerror, message=message))
            return False
        return True

    def store_fd(self, name: str, fd: int) -> bool:
        """Keep ``fd`` in the service's fd store under ``name`` (FDSTORE=1; the unit needs
        FileDescriptorStoreMax=): a restarted daemon gets it back in LISTEN_FDS."""
        return self._send_fds(f"FDSTORE=1\nFDNAME={name}".encode(), [fd])

    def remove_stored(self, name: str) -> bool:
        """Drop what the fd store keeps under ``name`` (FDSTOREREMOVE=1)."""
        return self._send_fds(f"FDSTOREREMOVE=1\nFDNAME={name}".encode(), [])

    def _send_fds(self, message: bytes, fds: list[int]) -> bool:
        if self._sock is None:
            return False
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            self._sock.sendmsg([message], rights, 0, self._target)
        except OSError as e:
            log.warning("sd_notify failed", extra=kv(error=e.strerror, message=message))
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(ready=1, status=status, mainpid=os.getpid())

    def status(self, status: str) -> bool:
        return self.send(status=status)

    def watchdog(self) -> bool:
        return self.send(watchdog=1)

    def reloading(self) -> bool:
        return self.send(
            reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        )

    def stopping(self, status: str) -> bool:
        return self.send(stopping=1, status=status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: MutableMapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked."""
    env = os.environ if env is None else env
    usec, pid = env.pop("WATCHDOG_USEC", None), env.pop("WATCHDOG_PID", None)
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid is not None and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6
