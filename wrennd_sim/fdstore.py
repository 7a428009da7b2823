"""A service manager's fd store for tests and the soak, speaking systemd's documented protocols.

Owns a ``NOTIFY_SOCKET`` (sd_notify(3)): ``FDSTORE=1`` with ``FDNAME=`` keeps the
fds sent with it, ``FDSTOREREMOVE=1`` with ``FDNAME=`` closes and forgets them,
other messages (READY=1, STATUS=, ...) are only counted.  ``launch_argv`` starts a
program as systemd does after a restart (sd_listen_fds(3)): every kept fd at 3, 4,
... in the child, ``LISTEN_FDS``, ``LISTEN_FDNAMES`` and ``LISTEN_PID`` naming the
child itself (set by ``listen_exec.py`` right before it execs the program).
The fds stay in the store across restarts, as systemd keeps them.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import sys
import threading
from pathlib import Path

LAUNCHER = Path(__file__).with_name("listen_exec.py")
MAX_FDS = 16


class FdStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="fdstore", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        space = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
        while not self._stop:
            try:
                data, ancdata, _, _ = self._sock.recvmsg(4096, space)
            except TimeoutError:
                continue
            except OSError:
                return
            fds = array.array("i")
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            self._handle(data.decode(errors="replace"), list(fds))

    def _handle(self, text: str, fds: list[int]) -> None:
        fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        with self._lock:
            self.messages.append(text)
            name = fields.get("FDNAME", "stored")
            if fields.get("FDSTORE") == "1" and len(fds) == 1:
                old = self._fds.pop(name, None)
                if old is not None:
                    os.close(old)
                self._fds[name] = fds.pop()
            elif fields.get("FDSTOREREMOVE") == "1":
                old = self._fds.pop(name, None)
                if old is not None:
                    os.close(old)
            for fd in fds:  # not kept: FDSTORE with several fds is not used by wrennd
                os.close(fd)

    def names(self) -> set[str]:
        with self._lock:
            return set(self._fds)

    def launch_argv(self, argv: list[str]) -> tuple[list[str], dict[str, str], tuple[int, ...]]:
        """(argv, extra environment, pass_fds) that start ``argv`` with the kept fds."""
        with self._lock:
            items = sorted(self._fds.items())
        env = {
            "NOTIFY_SOCKET": str(self.path),
            "FDSTORE_TEST_FDS": ",".join(str(fd) for _, fd in items),
            "FDSTORE_TEST_NAMES": ":".join(name for name, _ in items),
        }
        return [sys.executable, str(LAUNCHER), *argv], env, tuple(fd for _, fd in items)

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self._sock.close()
        with self._lock:
            for fd in self._fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds.clear()
        self.path.unlink(missing_ok=True)
