"""The two systemd protocols the daemon speaks: socket activation and sd_notify.

Both are small, stable, documented wire protocols (sd_listen_fds(3),
sd_notify(3)); implementing them directly avoids linking libsystemd
(systemd-python needs its headers to build) for a dozen lines of code.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import time
from collections.abc import MutableMapping

from wrennd.log import kv

log = logging.getLogger("wrennd.systemd")
LISTEN_FDS_START = 3


class ActivationError(RuntimeError):
    """The sockets systemd passed are not what the daemon can serve on."""


def listen_socket(env: MutableMapping[str, str] | None = None) -> socket.socket | None:
    """The listening AF_UNIX stream socket passed by systemd, or None when not activated.

    LISTEN_PID must name this process (the variables may have been inherited
    by accident); the variables are removed so child processes do not see them.
    """
    env = os.environ if env is None else env
    pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    if pid is None or count is None:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)
    if not pid.isdigit() or int(pid) != os.getpid():
        log.warning("ignoring LISTEN_FDS meant for another process", extra=kv(listen_pid=pid))
        return None
    if count != "1":
        raise ActivationError(f"LISTEN_FDS={count}: wrennd serves exactly one socket")
    fd = LISTEN_FDS_START
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
