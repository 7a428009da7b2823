"""wrennctl against a running daemon: tables, --json, progress, exit codes per error class."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wrennd.cli import Exit

Spawn = Any


@pytest.fixture
def daemon(spawn_daemon: Spawn) -> Iterator[Any]:
    child = spawn_daemon()
    child.notify.wait_for("READY")
    yield child
    assert child.stop() == 0


def wrennctl(
    socket_path: Path, *args: str, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    cmd = [*prefix, sys.executable, "-m", "wrennd.cli", "--socket", str(socket_path), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


def test_host_info_table_and_json(daemon: Any) -> None:
    table = wrennctl(daemon.socket_path, "host", "info")
    assert table.returncode == 0, table.stderr
    assert "FEATURE" in table.stdout and "uffd" in table.stdout
    assert "version.wrennd" in table.stdout
    raw = wrennctl(daemon.socket_path, "--json", "host", "info")
    info = json.loads(raw.stdout)
    assert info["socket"]["path"] == str(daemon.socket_path)
    assert set(info["features"]) == {"root", "uffd", "netns", "dm", "kvm"}


def test_host_stats_reports_this_daemon_and_its_components(daemon: Any) -> None:
    wrennctl(daemon.socket_path, "call", "test.lifecycle", '{"seconds": 0}')
    out = wrennctl(daemon.socket_path, "--json", "host", "stats", "--lag-window", "30")
    stats = json.loads(out.stdout)
    assert stats["process"]["pid"] == daemon.proc.pid
    assert stats["rpc"]["connections"] == 1
    assert stats["rpc"]["requests"] == 2
    assert stats["event_loop"]["samples"] > 0
    assert stats["test"] == {"lifecycle_finished": 1}  # a component's provider section
    info = json.loads(wrennctl(daemon.socket_path, "--json", "host", "info").stdout)
    assert info["test"] == {"extended": True}


def test_progress_is_drawn_and_the_result_printed(daemon: Any) -> None:
    out = wrennctl(daemon.socket_path, "call", "test.lifecycle", '{"seconds": 0, "tag": "cli"}')
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '"done"'
    assert "started" in out.stderr


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (("call", "host.stats", '{"bogus": 1}'), Exit.BAD_REQUEST, "Invalid params"),
        (("call", "no.such.method"), Exit.BAD_REQUEST, "Method not found"),
        (("call", "host.info", "{not json"), Exit.USAGE, "not valid JSON"),
    ],
)
def test_errors_have_their_own_exit_status(
    daemon: Any, args: tuple[str, ...], status: Exit, message: str
) -> None:
    out = wrennctl(daemon.socket_path, *args)
    assert out.returncode == status
    assert message in out.stderr


def test_daemon_not_running(tmp_path: Path) -> None:
    out = wrennctl(tmp_path / "absent.sock", "host", "info")
    assert out.returncode == Exit.NOT_RUNNING
    assert "wrennd is not running" in out.stderr


@pytest.mark.root
def test_permission_denied_on_the_socket(daemon: Any) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    nobody = (setpriv, "--reuid=65534", "--regid=65534", "--clear-groups")
    out = wrennctl(daemon.socket_path, "host", "info", prefix=nobody)
    assert out.returncode == Exit.PERMISSION, out.stderr
    assert "permission denied" in out.stderr
