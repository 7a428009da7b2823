"""A package upgrade that keeps sandboxes running: the keep-alive restart, for real.

The package is built twice from this tree (as it is, and as a newer build with a
bumped version) and installed into a venv of its own, as an operator installs it.
The daemon of the first build leaves its sandboxes running (``on_stop = "keep"``,
then ``host.restart``); the newer build is installed over it and started: it adopts
them.  The default SIGTERM of the new daemon still pauses them all.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.sandbox.running_daemon import Daemon

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd]
ROOT = Path(__file__).parents[3]
SOURCES = ("wrennd", "wrennd_sim", "native", "setup.py", "pyproject.toml", "README.md")
NEWER = "0.1.0.post1"


def _build(src: Path, out: Path) -> Path:
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"),
            *("--no-index", "-w", str(out), str(src)),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = sorted(out.glob("wrennd-*.whl"))
    return wheel


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """This tree's package, and a newer build of it (only its version differs)."""
    base = tmp_path_factory.mktemp("upgrade")
    built = []
    for version in (None, NEWER):
        src = base / f"src-{version or 'current'}"
        src.mkdir()
        for name in SOURCES:
            if (ROOT / name).is_dir():
                shutil.copytree(
                    ROOT / name, src / name, ignore=shutil.ignore_patterns("*.so", "__pycache__")
                )
            else:
                shutil.copy2(ROOT / name, src / name)
        if version is not None:
            for rel, old, new in (
                ("pyproject.toml", 'version = "0.1.0"', f'version = "{version}"'),
                ("wrennd/__init__.py", '__version__ = "0.1.0"', f'__version__ = "{version}"'),
            ):
                text = (src / rel).read_text()
                assert old in text, f"{rel} no longer says {old}: update this test"
                (src / rel).write_text(text.replace(old, new))
        built.append(_build(src, base / f"wheel-{version or 'current'}"))
    return built[0], built[1]


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A venv of its own; the dependencies come from the test's environment (a .pth
    line: its site-packages is on the path, its editable wrennd is not)."""
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    (site,) = (env / "lib").glob("python3*/site-packages")
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env


def _install(venv: Path, wheel: Path) -> None:
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install"),
            *("-q", "--no-deps", "--no-index", "--force-reinstall", str(wheel)),
        ],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def daemon(place: Any, venv: Path) -> Iterator[Daemon]:
    d = Daemon(place)
    d.program = [str(venv / "bin/wrennd")]
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.stop(signal.SIGTERM)


async def test_upgrade_keeps_sandboxes_running(
    daemon: Daemon, venv: Path, wheels: tuple[Path, Path], place: Any
) -> None:
    current, newer = wheels
    _install(venv, current)
    daemon.start(WRENND_ON_STOP="keep")
    c = await daemon.client()
    assert (await c.call("host.info"))["version"]["wrennd"] == "0.1.0"
    ids = [(await c.call("sandbox.create", {"image": "base", "memory_mib": 64}))["id"]]
    ids.append((await c.call("sandbox.create", {"image": "base", "memory_mib": 64}))["id"])
    pids = {sid: (await c.call("sandbox.get", {"id": sid}))["vmm"]["pid"] for sid in ids}
    counter = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.05; done"
    proc = await c.call("sandbox.process.start", {"id": ids[0], "shell": counter})
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0  # on_stop = keep

    _install(venv, newer)  # the upgrade, while the sandboxes run
    daemon.start()  # the default on_stop: pause
    c = await daemon.client()
    assert (await c.call("host.info"))["version"]["wrennd"] == NEWER
    for sid in ids:
        got = await c.call("sandbox.get", {"id": sid})
        assert got["state"] == "running" and got["vmm"]["pid"] == pids[sid], got
    running = await c.call("sandbox.process.get", {"id": ids[0], "process": proc["id"]})
    assert running["pid"] == proc["pid"] and running["running"], running
    ran = await c.call("sandbox.exec", {"id": ids[1], "shell": "echo up", "encoding": "text"})
    assert ran["stdout"] == "up\n"
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0  # the default still pauses them all
    for sid in ids:
        record = json.loads((place.state_dir / "sandboxes" / sid / "state.json").read_bytes())
        assert record["state"] == "paused", record

    daemon.start()
    c = await daemon.client()
    for sid in ids:
        await c.call("sandbox.destroy", {"id": sid})
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0
    assert not place.leaks()
