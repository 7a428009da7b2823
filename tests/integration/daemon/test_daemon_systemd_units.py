"""The systemd units and snippets: installed by `make install-systemd`, verified by systemd."""

from __future__ import annotations

import configparser
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from wrennd.config import Settings

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("destdir")
    bindir = Path(sys.executable).parent
    subprocess.run(
        ["make", "-s", "-C", str(REPO), "install-systemd", f"DESTDIR={dest}", f"BINDIR={bindir}"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return dest


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: `make install` installs the systemd Debian package"
    return path


def unit(installed: Path, name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(installed / "etc/systemd/system" / name)
    return parser


def test_systemd_analyze_verify_passes(installed: Path) -> None:
    units = installed / "etc/systemd/system"
    done = subprocess.run(
        [
            tool("systemd-analyze"),
            "verify",
            str(units / "wrennd.service"),
            str(units / "wrennd.socket"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Warnings ("Unknown key ...", "ignoring") exit 0 too: demand silence.
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_the_service_is_what_the_daemon_expects(installed: Path) -> None:
    service = unit(installed, "wrennd.service")["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"] == f"{Path(sys.executable).parent}/wrennd"
    # Only wrennd is signalled on stop/restart: its VMMs must survive it (adoption).
    assert service["KillMode"] == "process"
    assert service["Delegate"] == "yes"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # wrennd's configuration error status
    assert int(service["WatchdogSec"].rstrip("s")) > 0
    # Room in the fd store for the hand-over of filling engines (two fds per sandbox).
    assert int(service["FileDescriptorStoreMax"]) >= 2 * 1024
    # systemd must not kill the daemon while it is still pausing sandboxes.
    assert int(service["TimeoutStopSec"].rstrip("s")) > Settings().shutdown_timeout
    caps = set(service["CapabilityBoundingSet"].split())
    assert {"CAP_SYS_ADMIN", "CAP_NET_ADMIN"} <= caps
    socket_unit = unit(installed, "wrennd.socket")["Socket"]
    assert socket_unit["ListenStream"] == str(Settings().socket_path)
    assert (socket_unit["SocketMode"], socket_unit["SocketGroup"]) == ("0660", "wrennd")


def test_sysusers_snippet_parses(installed: Path) -> None:
    conf = installed / "etc/sysusers.d/wrennd.conf"
    done = subprocess.run(
        [tool("systemd-sysusers"), "--dry-run", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "wrennd" in done.stdout + done.stderr


def test_tmpfiles_snippet_creates_the_directories(installed: Path, tmp_path: Path) -> None:
    conf = installed / "etc/tmpfiles.d/wrennd.conf"
    subprocess.run(
        [tool("systemd-tmpfiles"), "--create", f"--root={tmp_path}", str(conf)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    for sub in ("", "images", "kernels", "memfiles", "sandboxes", "templates"):
        mode = (tmp_path / "var/lib/wrennd" / sub).stat().st_mode
        assert stat.S_IMODE(mode) == 0o700, sub
    assert stat.S_IMODE((tmp_path / "run/wrennd").stat().st_mode) == 0o755
