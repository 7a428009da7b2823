"""Named network namespaces and per-thread namespace switching, without shelling out.

Python 3.11 has no ``os.setns``/``os.unshare``, so the three syscalls come from
libc through ctypes.  A network namespace belongs to a thread, not a process:
the work that must run inside one (creating sockets, TAP fds, writing
/proc/sys/net) runs on a fresh thread that enters the namespace and then ends,
so no pooled thread is ever left in the wrong namespace.  Sockets and fds made
there keep their namespace wherever they are used afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

NETNS_RUN_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 2

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(rc: int, what: str, where: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} {where}: {os.strerror(err)}")


def netns_path(name: str) -> Path:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"bad network namespace name {name!r}")
    return NETNS_RUN_DIR / name


def list_named() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_RUN_DIR.iterdir())
    except FileNotFoundError:
        return []


def exists(name: str) -> bool:
    return netns_path(name).exists()


def enter(path: Path | str) -> None:
    """Move the calling thread into the network namespace at ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), "setns", str(path))
    finally:
        os.close(fd)


def enter_fd(fd: int) -> None:
    """Move the calling thread into the network namespace open at ``fd``."""
    _check(_libc.setns(fd, CLONE_NEWNET), "setns", f"fd {fd}")


def own_netns_path() -> Path:
    """The calling thread's current network namespace (threads may differ)."""
    return Path(f"/proc/self/task/{threading.get_native_id()}/ns/net")


def _ensure_run_dir() -> None:
    # Same dance as iproute2: /run/netns must be a shared mount so the bind
    # mounts below propagate to every mount namespace.
    NETNS_RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    rundir = str(NETNS_RUN_DIR).encode()
    if _libc.mount(b"none", rundir, None, MS_SHARED | MS_REC, None) == 0:
        return
    _check(_libc.mount(rundir, rundir, b"none", MS_BIND | MS_REC, None), "bind", str(rundir))
    _check(_libc.mount(b"none", rundir, None, MS_SHARED | MS_REC, None), "share", str(rundir))


def create_and_enter(name: str) -> None:
    """Create the named namespace ``name`` and leave the calling thread in it.

    Raises FileExistsError if the name is taken (by anyone: it is never reused).
    Call only on a throwaway thread (see ``run_in_thread``).
    """
    path = netns_path(name)
    _ensure_run_dir()
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET) for", name)
        src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
        _check(_libc.mount(src, str(path).encode(), b"none", MS_BIND, None), "bind", str(path))
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def remove(name: str) -> bool:
    """Unmount and unlink the named namespace; False when it did not exist."""
    path = netns_path(name)
    if _libc.umount2(str(path).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"umount {path}: {os.strerror(err)}")
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def write_sysctl(key: str, value: str) -> None:
    """Write /proc/sys/<key> as seen from the calling thread's network namespace."""
    with open(Path("/proc/sys") / key, "w") as f:
        f.write(value)


def read_sysctl(key: str) -> str:
    with open(Path("/proc/sys") / key) as f:
        return f.read().strip()


def run_in_thread(fn: Callable[[], T], netns: Path | str | None = None) -> T:
    """Run ``fn`` on a new thread (entered into ``netns`` first, if given); wait for it."""
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            if netns is not None:
                enter(netns)
            result.append(fn())
        except BaseException as e:
            error.append(e)

    t = threading.Thread(target=body, name="wrennd-netns", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


async def run_async(fn: Callable[[], T], netns: Path | str | None = None) -> T:
    """``run_in_thread`` without blocking the event loop: the new thread finishes the future."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: object) -> None:
        if fut.cancelled():
            return
        if ok:
            fut.set_result(value)  # type: ignore[arg-type]
        else:
            fut.set_exception(value)  # type: ignore[arg-type]

    def body() -> None:
        try:
            if netns is not None:
                enter(netns)
            value: object = fn()
            ok = True
        except BaseException as e:
            value, ok = e, False
        # RuntimeError: the loop closed while we worked, nobody is waiting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, ok, value)

    threading.Thread(target=body, name="wrennd-netns", daemon=True).start()
    return await asyncio.shield(fut)


def socket_in(netns: Path | str, family: int, type_: int) -> socket.socket:
    """A socket that lives in ``netns`` (a name or a path), usable from any thread."""
    path = netns if isinstance(netns, Path) else netns_path(netns)
    return run_in_thread(lambda: socket.socket(family, type_), netns=path)
