"""Run one VMM process (Firecracker, the jailer or fcsim) and own its whole lifetime.

The launcher starts the process in the sandbox's network namespace with its
own API socket, log file, metrics file and stdout/stderr capture; waits until
the API socket accepts connections; notices an exit at any time through a
pidfd watched by the event loop; stops it with SIGTERM then SIGKILL; reaps it;
and removes the API socket it leaves behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wrennd.log import kv
from wrennd.vm import netns
from wrennd.vm.errors import VmmExited, VmmStartTimeout
from wrennd.vm.identity import VmmIdentity

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 20
# How often a starting VMM's API socket is tried.
SOCKET_POLL = 0.001


@dataclass(frozen=True)
class VmmFiles:
    """Where one VMM keeps its API socket and output; all under one run directory."""

    run_dir: Path
    api_socket: Path
    log_file: Path
    metrics_file: Path
    output_file: Path

    @classmethod
    def under(cls, run_dir: Path) -> VmmFiles:
        return cls(
            run_dir=run_dir,
            api_socket=run_dir / "api.sock",
            log_file=run_dir / "vmm.log",
            metrics_file=run_dir / "metrics.json",
            output_file=run_dir / "vmm.out",
        )


@dataclass(frozen=True)
class FirecrackerArgs:
    """The command-line flags the daemon passes to firecracker (and fcsim accepts)."""

    binary: Path
    vm_id: str
    files: VmmFiles
    level: str = "Info"
    extra: Sequence[str] = field(default_factory=tuple)

    def flags(self, api_socket: Path | None = None, log_file: Path | None = None) -> list[str]:
        """The flags alone (what follows the jailer's ``--``). Paths default to the
        host paths; under the jailer they are paths inside its chroot."""
        return [
            "--api-sock",
            str(api_socket or self.files.api_socket),
            "--id",
            self.vm_id,
            "--log-path",
            str(log_file or self.files.log_file),
            "--level",
            self.level,
            "--show-level",
            "--show-log-origin",
            *self.extra,
        ]

    def argv(self) -> list[str]:
        return [str(self.binary), *self.flags()]


def tail_lines(path: Path, n: int = LOG_TAIL_LINES, max_bytes: int = 64 * 1024) -> list[str]:
    """The last ``n`` lines of a file (reads at most ``max_bytes`` from its end)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    return [line for line in lines if line.strip()][-n:]


def _prepare_files(files: VmmFiles) -> None:
    files.run_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    # A socket left by a previous VMM would make the wait succeed at once.
    with contextlib.suppress(FileNotFoundError):
        files.api_socket.unlink()
    # Firecracker opens its log and metrics paths without O_CREAT.
    for path in (files.log_file, files.metrics_file):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.close(fd)


class VmmProcess:
    """A VMM: started with ``await VmmProcess.start(...)``, or one that a previous daemon
    started, taken over with ``VmmProcess.adopt(...)``."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes] | None,
        files: VmmFiles,
        pid: int | None = None,
        pidfd: int | None = None,
    ) -> None:
        self._popen = popen
        self.files = files
        if popen is not None:
            pid = popen.pid
        if pid is None:
            raise ValueError("a VMM process needs a Popen or a pid")
        self.pid: int = pid
        self._pidfd = os.pidfd_open(self.pid) if pidfd is None else pidfd
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_reader(self._pidfd, self._on_pidfd)
        self._stopping = False

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        files: VmmFiles,
        *,
        netns_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        socket_timeout: float = 10.0,
        on_spawn: Callable[[int], Awaitable[None]] | None = None,
    ) -> VmmProcess:
        """Start the VMM and return once its API socket accepts connections.

        Raises ``VmmExited`` if it exits first and ``VmmStartTimeout`` (after
        killing it) if the socket does not come up in time.  ``on_spawn(pid)`` runs as
        soon as the process exists (the caller records it before anything else happens);
        if it fails, the process is killed.
        """
        _prepare_files(files)
        out = os.open(
            files.output_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600
        )
        try:

            def make() -> subprocess.Popen[bytes]:
                return subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=files.run_dir,
                    env=None if env is None else dict(env),
                    close_fds=True,
                    # Its own session: a signal to the daemon's group does not reach it.
                    start_new_session=True,
                )

            popen = await netns.spawn(netns_path, make)
        finally:
            os.close(out)
        proc = cls(popen, files)
        log.info("vmm started", extra=kv(pid=proc.pid, argv=" ".join(argv), netns=netns_path))
        try:
            if on_spawn is not None:
                await on_spawn(proc.pid)
            await proc.wait_socket(socket_timeout)
        except BaseException:
            await proc.stop(grace=0.0)
            raise
        return proc

    @classmethod
    def adopt(
        cls, pid: int, started: int, files: VmmFiles, marker: str | None = None
    ) -> VmmProcess | None:
        """The running VMM ``pid`` if it is the very process recorded (its start time)
        and serves ``files.api_socket`` (its command line; a jailed one: has the word
        ``marker``); None otherwise.  The pidfd is
        opened first, so the checks cannot be fooled by a pid recycled in between."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        if not VmmIdentity(pid, started, files.api_socket, marker).alive():
            os.close(pidfd)
            return None
        return cls(None, files, pid=pid, pidfd=pidfd)

    # --- exit tracking -------------------------------------------------------
    def _reap(self) -> int:
        if self._popen is not None:
            # The pidfd is readable once the child is a zombie: poll() reaps it now.
            rc = self._popen.poll()
            return self._popen.wait() if rc is None else rc
        try:  # adopted: our child only if this daemon's process started it (tests)
            res = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            return -1  # another daemon's child: its status went to its new parent
        if res is None:
            return -1
        return res.si_status if res.si_code == os.CLD_EXITED else -res.si_status

    def _on_pidfd(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        rc = self._reap()
        os.close(self._pidfd)
        self._pidfd = -1
        self._remove_socket()
        if not self._stopping:
            log.warning(
                "vmm exited unexpectedly",
                extra=kv(pid=self.pid, returncode=rc, log_tail=" | ".join(self.log_tail(5))),
            )
        if not self._exited.done():
            self._exited.set_result(rc)

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    @property
    def running(self) -> bool:
        return not self._exited.done()

    async def wait(self) -> int:
        """Wait for the process to exit (for whatever reason); return its status."""
        return await asyncio.shield(self._exited)

    def log_tail(self, n: int = LOG_TAIL_LINES) -> list[str]:
        """Last lines of the VMM log and of its stdout/stderr, in that order."""
        return tail_lines(self.files.log_file, n) + tail_lines(self.files.output_file, n)

    def exited_error(self, what: str) -> VmmExited:
        rc = self.returncode
        return VmmExited(what, rc if rc is not None else 0, self.log_tail())

    # --- startup -------------------------------------------------------------
    async def wait_socket(self, limit: float) -> None:
        """Return once the API socket accepts a connection.  Tried every millisecond (a
        stat while the file is missing): a doubling backoff saw a VMM that was up to
        100 ms late, on the path of every create and resume."""
        deadline = time.monotonic() + limit
        while True:
            if self._exited.done():
                raise self.exited_error("API socket never appeared")
            if await self._socket_accepts():
                return
            if time.monotonic() >= deadline:
                raise VmmStartTimeout(str(self.files.api_socket), limit, self.log_tail())
            await asyncio.sleep(SOCKET_POLL)

    async def _socket_accepts(self) -> bool:
        if not self.files.api_socket.exists():
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            await asyncio.get_running_loop().sock_connect(sock, str(self.files.api_socket))
        except OSError:
            return False
        finally:
            sock.close()
        return True

    # --- shutdown ------------------------------------------------------------
    def _signal(self, sig: signal.Signals) -> None:
        if self._exited.done():
            return
        try:
            # Through the pidfd: never hits a recycled pid.
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return
        try:
            signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError:
            pass
        finally:
            os.close(fd)

    async def stop(self, grace: float = 5.0) -> int:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; reap; remove the socket."""
        self._stopping = True
        if not self._exited.done() and grace > 0:
            self._signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exited), grace)
        if not self._exited.done():
            if grace > 0:
                log.warning("vmm ignored SIGTERM, killing", extra=kv(pid=self.pid, grace=grace))
            self._signal(signal.SIGKILL)
        rc = await asyncio.shield(self._exited)
        self._remove_socket()
        return rc

    async def kill(self) -> int:
        """For a VMM that must not live on (e.g. after a failed snapshot load)."""
        return await self.stop(grace=0.0)

    def _remove_socket(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.files.api_socket.unlink()
