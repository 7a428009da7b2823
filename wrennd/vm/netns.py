"""Start a child process inside a network namespace without a shell or a helper binary.

A network namespace belongs to a thread, and a child inherits the namespace
of the thread that forks it. So one dedicated spawner thread enters the target
namespace with setns(2), forks and execs the child, and returns to its own
namespace; nothing runs between fork and exec in the child (no preexec_fn, so
the fork stays safe in a multithreaded process) and the event loop thread
never changes namespace.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.setns.restype = ctypes.c_int

T = TypeVar("T")


class NetnsError(OSError):
    """Entering or leaving a network namespace failed."""


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"setns({what}): {os.strerror(err)}")


class _Spawner:
    """One thread does every namespaced fork, so a failed return poisons only it."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._broken: str | None = None

    def pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wrennd-spawn")
            return self._pool

    def run_in(self, netns: Path, fn: Callable[[], T]) -> T:
        if self._broken is not None:
            raise NetnsError(0, f"spawner thread unusable: {self._broken}")
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise NetnsError(e.errno, f"network namespace {netns}: {e.strerror}") from e
            try:
                _setns(target, str(netns))
            finally:
                os.close(target)
            try:
                return fn()
            finally:
                try:
                    _setns(home, "back to the spawner's own namespace")
                except NetnsError as e:
                    self._broken = str(e)
                    raise
        finally:
            os.close(home)


_SPAWNER = _Spawner()


def run_in_netns(netns: Path, fn: Callable[[], T]) -> T:
    """Run ``fn`` on the calling thread while it is inside ``netns`` (blocking)."""
    return _SPAWNER.run_in(netns, fn)


async def spawn(
    netns: Path | None, make: Callable[[], subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    """Create the child on the spawner thread, inside ``netns`` when given, off the loop."""
    loop = asyncio.get_running_loop()
    if netns is None:
        return await loop.run_in_executor(_SPAWNER.pool(), make)
    return await loop.run_in_executor(_SPAWNER.pool(), _SPAWNER.run_in, netns, make)
