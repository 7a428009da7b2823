"""The API socket: passed by systemd, or created at ``run_dir/wrennd.sock`` (0660, group wrennd).

The socket is bound under a temporary name, given its mode and group, and
renamed into place, so a client never sees it with the wrong permissions and
a stale socket left by a crash is replaced atomically.  A socket that still
answers belongs to a running daemon: the new one refuses to start.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from wrennd import durable, systemd
from wrennd.log import kv

log = logging.getLogger("wrennd.listener")
SOCKET_MODE = 0o660
BACKLOG = 4096
# sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


class ListenerError(RuntimeError):
    """The daemon cannot listen where it was told to."""


@dataclass
class Listener:
    sock: socket.socket
    path: str
    activated: bool
    # (st_dev, st_ino, st_ctime_ns) of the file this daemon created: inode numbers get reused.
    identity: tuple[int, int, int] = (0, 0, 0)

    def remove(self) -> None:
        """Unlink the socket file if it is still the one this daemon created."""
        if self.activated:
            return  # systemd owns it
        try:
            path = Path(self.path)
            if _identity(path) == self.identity:
                path.unlink()
        except FileNotFoundError:
            pass


def _identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_ctime_ns


def _in_use(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        probe.connect(str(path))
    except OSError as e:
        # A full backlog (EAGAIN) still means someone is listening.
        return e.errno == errno.EAGAIN
    finally:
        probe.close()
    return True


def _group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def create(path: Path, group: str) -> Listener:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ListenerError(f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes")
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Clients in the socket's group must reach it; the daemon's umask (077) would not let them.
        path.parent.chmod(0o755)
    if path.is_socket() and _in_use(path):
        raise ListenerError(f"another process is already serving on {path}")
    if path.exists() and not path.is_socket():
        raise ListenerError(f"{path} exists and is not a socket; refusing to replace it")
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        tmp.unlink(missing_ok=True)
        sock.bind(str(tmp))
        tmp.chmod(SOCKET_MODE)
        gid = _group_id(group)
        if gid is not None:
            os.chown(tmp, -1, gid)
        else:
            log.info("socket group does not exist; socket stays root's", extra=kv(group=group))
        sock.listen(BACKLOG)
        durable.publish(tmp, path)
    except OSError as e:
        sock.close()
        tmp.unlink(missing_ok=True)
        raise ListenerError(f"cannot listen on {path}: {e.strerror}") from e
    sock.setblocking(False)
    return Listener(sock, str(path), activated=False, identity=_identity(path))


def open_listener(path: Path, group: str, sockets: list[int] | None = None) -> Listener:
    """systemd's socket (``sockets``: the activation fds; None: read the environment),
    else a socket of our own at ``path``."""
    try:
        passed = systemd.listen_socket() if sockets is None else systemd.socket_of(sockets)
    except systemd.ActivationError as e:
        raise ListenerError(str(e)) from e
    if passed is not None:
        name = passed.getsockname()
        shown = name if isinstance(name, str) and name else "(unnamed)"
        return Listener(passed, shown, activated=True)
    return create(path, group)
