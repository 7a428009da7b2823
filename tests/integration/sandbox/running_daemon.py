"""A real wrennd process on a test's place (state dir, run dir, test-bed network, fcsim)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from wrennd.rpc.client import Client, DaemonNotRunning


class Daemon:
    def __init__(self, place: Any) -> None:
        self.place = place
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = place.run_dir / "wrennd.log"
        self.socket = place.run_dir / "wrennd.sock"
        # A service manager's fd store (wrennd_sim/fdstore.py): when set,
        # the daemon is started as systemd would, with NOTIFY_SOCKET and the kept fds.
        self.fd_store: Any = None
        # The daemon's command (default: this Python's wrennd.daemon); an installed
        # package's ``wrennd`` console script for upgrade tests.
        self.program: list[str] = [sys.executable, "-m", "wrennd.daemon"]

    def start(self, *args: str, umask: int | None = None, **extra: str) -> None:
        p = self.place
        env = {
            **os.environ,
            "WRENND_STATE_DIR": str(p.state_dir),
            "WRENND_RUN_DIR": str(p.run_dir),
            "WRENND_SOCKET_GROUP": "wrennd-test-no-such-group",
            "WRENND_FIRECRACKER_BIN": "/nonexistent/firecracker",
            "WRENND_KERNEL": str(p.kernel),
            "WRENND_STORAGE_BACKEND": "reflink",
            "WRENND_NETWORK_PREFIX": p.prefix,
            "WRENND_NFT_TABLE": p.table,
            "WRENND_HOST_NETNS": str(p.bed.host_path),
            "WRENND_MAX_GENERATIONS": "4",
            "WRENND_SHUTDOWN_TIMEOUT": "60",
            **extra,
        }
        env.pop("NOTIFY_SOCKET", None)
        argv = [*self.program, *args]
        pass_fds: tuple[int, ...] = ()
        if self.fd_store is not None:
            argv, extra_env, pass_fds = self.fd_store.launch_argv(argv)
            env.update(extra_env)
        old = None if umask is None else os.umask(umask)
        try:
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(
                    argv, env=env, stderr=out, stdout=out, pass_fds=pass_fds
                )
        finally:
            if old is not None:
                os.umask(old)

    async def client(self) -> Client:
        try:
            return await Client.connect_when_up(self.socket, 30, alive=self.alive)
        except DaemonNotRunning as e:
            raise AssertionError(self.log.read_text()[-5000:]) from e

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: signal.Signals) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = self.proc.wait(90)
        self.proc = None
        return rc

    def env(self) -> dict[str, str]:
        """What a client process needs to find this daemon (wrennctl, the SDK, examples)."""
        return {**os.environ, "WRENND_SOCKET": str(self.socket)}
