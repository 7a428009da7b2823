"""Run the guest agent on the host, on loopback, against a temporary root.

The agent runs under the guest's interpreter (Debian's /usr/bin/python3 with
python3-aiohttp, what the image has) from the same staged files the image
carries (wrennd.guest.bundle), so a test also proves it needs nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from wrennd.guest import bundle
from wrennd.guest.client import GuestClient

GUEST_PYTHON = "/usr/bin/python3"  # Debian's; python3-aiohttp comes from deps/debian-packages.txt


@dataclass
class AgentProcess:
    proc: subprocess.Popen[bytes]
    port: int
    root: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status(self, key: str) -> int:
        """A /proc/<pid>/status field in bytes (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def world_readable_dir(prefix: str) -> Path:
    """A 0755 directory under /tmp: agents run as ``nobody`` must reach it, and
    pytest's own temporary directories (like CI's checkout) may be private."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def staged_agent() -> Iterator[Path]:
    dest = world_readable_dir("wrennd-agent-files-")
    bundle.stage(dest)
    yield dest
    shutil.rmtree(dest)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary directory an agent running as ``nobody`` can traverse."""
    path = world_readable_dir("wrennd-agent-root-")
    yield path
    shutil.rmtree(path)


@pytest.fixture
def start_agent(staged_agent: Path, tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def start(*extra: str, root: Path | None = None, user: str | None = None) -> AgentProcess:
        if root is None:
            root = tmp_path / f"root{len(started)}"
            root.mkdir()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(staged_agent)}
        cmd = [GUEST_PYTHON, "-m", "wrennd.guest.agent", "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--root", str(root), "--no-set-clock", *extra]
        # cwd: `python -m` puts it on sys.path; the agent must load from the bundle only.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, user=user, cwd=staged_agent)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            raise RuntimeError(f"agent exited with {proc.returncode} before listening")
        agent = AgentProcess(proc, int(json.loads(line)["listening"][1]), root)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


@pytest.fixture
def agent(start_agent: Callable[..., AgentProcess]) -> AgentProcess:
    return start_agent()


@pytest.fixture
async def client(agent: AgentProcess) -> AsyncIterator[GuestClient]:
    async with GuestClient(agent.url) as c:
        yield c


@pytest.fixture
def agent_root(agent: AgentProcess) -> Path:
    return agent.root


@pytest.fixture
def agent_url(agent: AgentProcess) -> str:
    return agent.url
