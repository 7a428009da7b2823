"""wrennctl against a running daemon: tables, --json, progress, exit codes per error class."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.polling import wait_for
from wrennd import cli
from wrennd.cli import Exit
from wrennd.cli.render import render_nothing
from wrennd.rpc.client import Client, ClientError
from wrennd.storage.choose import choose_backend

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
    assert set(info["features"]) == {"root", "uffd", "netns", "dm", "kvm", "ksm"}
    # The backend really chosen for this state dir, not just the configured "auto".
    assert info["storage"]["configured"] == "auto"
    probed = choose_backend("auto", Path(info["config"]["state_dir"]))
    assert info["storage"]["backend"] == probed.name


def test_host_stats_reports_this_daemon_and_its_components(daemon: Any) -> None:
    wrennctl(daemon.socket_path, "call", "test.lifecycle", '{"seconds": 0}')
    out = wrennctl(daemon.socket_path, "--json", "host", "stats", "--lag-window", "30")
    stats = json.loads(out.stdout)
    assert stats["process"]["pid"] == daemon.proc.pid
    # The earlier wrennctl's connection and this one (whose close may race the count).
    assert stats["rpc"]["connections_total"] == 2
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
    # A socket owned by someone else, reached by a root whose DAC-override
    # capabilities are gone: the kernel answers EACCES exactly as it would a
    # user outside the wrennd group, and the client keeps access to its own
    # code wherever the checkout lives (CI clones into a private directory).
    os.chown(daemon.socket_path, 65534, 65534)
    drop_dac = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")
    out = wrennctl(daemon.socket_path, "host", "info", prefix=drop_dac)
    assert out.returncode == Exit.PERMISSION, out.stderr
    assert "permission denied" in out.stderr


def test_a_streamed_command_writes_as_it_runs_and_exits_with_the_remote_code(
    daemon: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # How the lifecycle's `wrennctl sandbox exec` is declared, here for the test method.
    exec_command = cli.Command(
        ("test", "exec"),
        "test.exec",
        "run a shell script",
        render=render_nothing,
        params=lambda a: {"script": a.script},
        arguments=lambda p: p.add_argument("script"),
        exit_status=lambda result: int(result["exit_code"]),
    )
    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, exec_command])
    script = "echo out1; echo err1 >&2; echo out2; exit 7"
    status = cli.main(["--socket", str(daemon.socket_path), "test", "exec", script])
    captured = capsys.readouterr()
    assert status == 7
    assert captured.out == "out1\nout2\n"
    assert "err1\n" in captured.err


async def test_a_stream_whose_client_leaves_kills_its_process(daemon: Any) -> None:
    client = await Client.connect(daemon.socket_path)
    started = asyncio.Event()
    call = asyncio.ensure_future(
        client.call("test.exec", {"script": "echo up; exec sleep 60"}, lambda m, p: started.set())
    )
    await asyncio.wait_for(started.wait(), 10)
    pid = int((daemon.marker_dir / "exec.pid").read_text())
    await client.close()
    with pytest.raises(ClientError):
        await call
    await wait_for(lambda: not exists(pid), what="the streamed process ended with its client")


def exists(pid: int) -> bool:
    """Whether the process exists at all (a zombie not yet reaped still does)."""
    return Path(f"/proc/{pid}").exists()
