"""docs/api.md is generated from the daemon's method table: it must match what it answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.root
def test_api_reference_is_current() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "docs" / "gen_api.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr + "\n(run: .venv/bin/python docs/gen_api.py)"
