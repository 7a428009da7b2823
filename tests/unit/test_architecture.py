"""The architecture picture in docs/ is drawn from the code, and is current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "docs" / "architecture.py"


def test_the_committed_picture_matches_the_imports() -> None:
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_picture_shows_the_layers_and_the_simulator_apart() -> None:
    dot = (REPO / "docs" / "architecture.dot").read_text()
    for edge in ('"wrennd.rpc" -> "wrennd.sandbox"', '"wrennd.sandbox" -> "wrennd.uffd"'):
        assert edge in dot
    assert not any(
        line.strip().startswith('"wrennd.') and '-> "wrennd_sim' in line
        for line in dot.splitlines()
    ), "the daemon never imports the simulator"
    svg = (REPO / "docs" / "architecture.svg").read_text()
    assert "wrennd.sandbox" in svg and "wrennd_sim" in svg
