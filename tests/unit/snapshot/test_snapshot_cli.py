"""`python -m wrennd.snapshot`: every documented form, exit codes, errors on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BS = 4096
PAGES = 16


def tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wrennd.snapshot", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_every_form_end_to_end(tmp_path: Path) -> None:
    store, full, diff = tmp_path / "store", tmp_path / "full.mem", tmp_path / "diff.mem"
    memory = bytearray(PAGES * BS)
    memory[BS : 3 * BS] = b"\x05" * 2 * BS
    full.write_bytes(bytes(memory))
    r = tool("ingest-full", "--memfile", full, "--snapshot", tmp_path / "a", "--store", store)
    assert r.returncode == 0, r.stderr

    fd = os.open(diff, os.O_WRONLY | os.O_CREAT, 0o600)
    os.ftruncate(fd, PAGES * BS)
    os.pwrite(fd, b"\x07" * BS, 9 * BS)
    os.close(fd)
    memory[9 * BS : 10 * BS] = b"\x07" * BS
    r = tool("ingest-diff", "--memfile", diff, "--parent", tmp_path / "a",
             "--snapshot", tmp_path / "b", "--store", store)  # fmt: skip
    assert r.returncode == 0, r.stderr

    r = tool("inspect", "--snapshot", tmp_path / "b", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["generation"] == 1 and len(info["generations"]) == 2
    assert [g["mapped_bytes"] for g in info["generations"]] == [2 * BS, BS]
    assert [g["allocated_bytes"] for g in info["generations"]] == [2 * BS, BS]  # holes punched
    assert info["zero_bytes"] == (PAGES - 3) * BS
    assert "generation 1" in tool("inspect", "--snapshot", tmp_path / "b").stdout

    for args in (("verify",), ("collapse",), ("verify",)):
        r = tool(*args, "--snapshot", tmp_path / "b", "--store", store)
        assert r.returncode == 0, r.stderr
    r = tool("export", "--snapshot", tmp_path / "b", "--out", tmp_path / "flat", "--store", store)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "flat").read_bytes() == bytes(memory)


def test_errors_go_to_stderr_with_nonzero_status(tmp_path: Path) -> None:
    r = tool("inspect", "--snapshot", tmp_path / "nothing")
    assert r.returncode == 1 and "not a snapshot" in r.stderr and r.stdout == ""
    r = tool("ingest-full", "--memfile", tmp_path / "missing.mem", "--snapshot", tmp_path / "s",
             "--store", tmp_path / "store")  # fmt: skip
    assert r.returncode == 1 and "cannot open memfile" in r.stderr
    r = tool("export", "--snapshot", tmp_path / "s")
    assert r.returncode == 2 and "--out" in r.stderr


def test_verify_fails_on_damage(tmp_path: Path) -> None:
    store, full = tmp_path / "store", tmp_path / "full.mem"
    full.write_bytes(b"\x01" * PAGES * BS)
    assert tool("ingest-full", "--memfile", full, "--snapshot", tmp_path / "a",
                "--store", store).returncode == 0  # fmt: skip
    gen = next((tmp_path / "a" / "memfiles").iterdir())
    os.truncate(gen, BS)
    r = tool("verify", "--snapshot", tmp_path / "a", "--store", store)
    assert r.returncode == 1 and "entries need" in r.stderr
    (tmp_path / "a" / "memory.header").write_bytes(b"WRNDMEM\x00junk")
    r = tool("verify", "--snapshot", tmp_path / "a", "--store", store)
    assert r.returncode == 1 and "memory.header" in r.stderr
