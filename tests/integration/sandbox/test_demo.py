"""make demo and make console as a user runs them: they work, and leave nothing behind.

Both are advertised in the README; each builds (or reuses) the guest image, starts a
scratch wrennd on a test-bed network and removes everything it made on the way out.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from wrennd.network import nsutil

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[3]


def _leftovers(kind: str) -> set[str]:
    """Scratch dirs and test-bed namespaces of this kind (demo/demo.py names its test bed
    with the kind's first letter and four hex digits); other tests' are not counted."""
    dirs = {str(p) for p in Path("/var/tmp").glob(f"wrennd-{kind}-*")}
    bed = re.compile(rf"{kind[0]}[0-9a-f]{{4}}")
    return dirs | {n for n in nsutil.list_named() if bed.match(n)}


def test_make_demo_runs_its_session_and_cleans_up() -> None:
    before = _leftovers("demo")
    done = subprocess.run(
        [sys.executable, str(REPO / "demo" / "demo.py")],
        capture_output=True,
        timeout=800,
        check=False,
    )
    out = done.stdout.decode(errors="replace")
    assert done.returncode == 0, out[-3000:] + done.stderr.decode(errors="replace")[-3000:]
    for step in ("sandbox create", "sandbox pause", "sandbox resume", "template delete"):
        assert re.search(rf"^\$ wrennctl (--json )?{step}", out, re.M), step
    assert "everything make demo made is gone" in out
    assert _leftovers("demo") <= before


def test_make_console_serves_until_ctrl_c_and_cleans_up() -> None:
    before = _leftovers("console")
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "demo" / "console.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # As from a shell's background job: Ctrl-C must still stop it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 600
    url = ""
    while not url:
        assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)[-3000:]
        line = proc.stdout.readline().decode(errors="replace")
        lines.append(line)
        if line.strip().startswith("open  http://"):
            url = line.split()[1]
    base = url.split("/test?")[0]
    with urllib.request.urlopen(f"{base}/healthz", timeout=10) as r:
        assert r.status == 200
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    rest, _ = proc.communicate(timeout=300)
    out = "".join(lines) + rest.decode(errors="replace")
    assert proc.returncode == 0, out[-3000:]
    assert "everything make console made is gone" in out
    assert _leftovers("console") <= before
