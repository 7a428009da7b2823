"""The README's quick start, word for word, on a fresh clone, with its sample output checked.

The quick start is the transcript between ``<!-- quickstart:begin -->`` and
``<!-- quickstart:end -->``: ``$ `` lines are commands, the lines after one are
its output (``...`` stands for any lines). The commands run in one bash, in a
``git clone`` of this checkout, as written; only the environment points the
daemon at this test's state and run directories, test-bed network and fcsim
(the WRENND_* settings), so the machine's own network and /var/lib are never
touched. Outputs are compared after sandbox ids, times and ages are
normalized: a README that no longer matches what the commands print fails.

    sudo .venv/bin/python -m pytest tests/integration/sandbox/test_quickstart.py
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.polling import wait_for_blocking

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd, pytest.mark.timeout(1200)]
REPO = Path(__file__).resolve().parents[3]
BEGIN, END = "<!-- quickstart:begin -->", "<!-- quickstart:end -->"
_NORMALIZE = [
    (re.compile(r"sb-[0-9a-f]{12}"), "sb-ID"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"), "TIME"),
    (re.compile(r"\b\d+[smhd] ago\b"), "AGE"),
    (re.compile(r"\b\d+\.\d+\b"), "N.N"),
]


def transcript(readme: str) -> list[tuple[str, list[str]]]:
    """[(command, expected output lines)] of the quick start."""
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0]
    body = block.split("```", 2)[1].split("\n", 1)[1]  # inside the fence, after its language
    steps: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
    return steps


def normalize(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        for pattern, repl in _NORMALIZE:
            line = pattern.sub(repl, line)
        out.append(" ".join(line.split()))
    while out and not out[-1]:
        out.pop()
    return out


def matches(expected: list[str], got: list[str]) -> bool:
    if "..." not in expected:
        return expected == got
    head = expected[: expected.index("...")]
    tail = expected[expected.index("...") + 1 :]
    return got[: len(head)] == head and (not tail or got[-len(tail) :] == tail)


def test_readme_quick_start_on_a_fresh_clone(place: Any, tmp_path: Path) -> None:
    steps = transcript((REPO / "README.md").read_text())
    assert len(steps) >= 10, "the quick start lost its commands"
    clone = tmp_path / "wrennd"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    (place.state_dir / "images" / "base.ext4").unlink()  # the quick start registers its own
    script = ["set -e", f"cd {clone}"]
    for i, (command, _) in enumerate(steps):
        script.append(f"echo @@STEP {i}")
        script.append(command)
        if command.rstrip().endswith("&"):
            script.append("echo @@PID $!")
    env = {
        **os.environ,
        "WRENND_STATE_DIR": str(place.state_dir),
        "WRENND_RUN_DIR": str(place.run_dir),
        "WRENND_SOCKET": str(place.run_dir / "wrennd.sock"),
        "WRENND_SOCKET_GROUP": "root",
        "WRENND_FIRECRACKER_BIN": "/nonexistent/firecracker",
        "WRENND_KERNEL": str(place.kernel),
        "WRENND_STORAGE_BACKEND": "reflink",
        "WRENND_NETWORK_PREFIX": place.prefix,
        "WRENND_NFT_TABLE": place.table,
        "WRENND_HOST_NETNS": str(place.bed.host_path),
    }
    env.pop("NOTIFY_SOCKET", None)
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)], env=env, capture_output=True, text=True, timeout=1100
    )
    outputs: dict[int, list[str]] = {}
    pid = None
    current = -1
    for line in done.stdout.splitlines():
        if line.startswith("@@STEP "):
            current = int(line.split()[1])
            outputs[current] = []
        elif line.startswith("@@PID "):
            pid = int(line.split()[1])
        elif current >= 0:
            outputs[current].append(line)
    try:
        assert done.returncode == 0, f"step {current} failed: {done.stderr[-3000:]}"
        wrong = []
        for i, (command, expected) in enumerate(steps):
            want, got = normalize(expected), normalize(outputs.get(i, []))
            if not matches(want, got):
                wrong.append(f"$ {command}\nREADME:\n{want}\nprinted:\n{outputs.get(i)}")
        assert not wrong, "\n\n".join(wrong)
    finally:
        if pid is not None:  # the quick start's daemon: SIGTERM pauses its sandboxes, then exits
            os.kill(pid, signal.SIGTERM)
            wait_for_blocking(lambda: not Path(f"/proc/{pid}").exists(), timeout=120)
