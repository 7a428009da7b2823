"""images/fetch-kernel: a kernel from a URL, and the fallback to the Debian-derived one.

No network is needed for the first cases (file:// URLs); the fallback is made to
happen by pointing the CI bucket at a closed local port, and then builds (or
finds in /var/cache/wrennd/kernels) the Debian-derived kernel through apt.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
FETCH = REPO / "images" / "fetch-kernel"


def _fetch(out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FETCH), str(out)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_a_url_kernel_gets_metadata_and_loses_a_stale_initrd(tmp_path: Path) -> None:
    src = tmp_path / "src-vmlinux"
    src.write_bytes(b"\x7fELF" + bytes(200))
    out = tmp_path / "k" / "vmlinux"
    out.parent.mkdir()
    Path(f"{out}.initrd").write_bytes(b"from an earlier Debian kernel")
    done = _fetch(out, WRENN_KERNEL_URL=src.as_uri())
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == src.read_bytes()
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["source"] == "url" and meta["url"] == src.as_uri()
    assert meta["initrd"] is None
    assert not Path(f"{out}.initrd").exists()


def test_a_compressed_kernel_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "bzImage"
    src.write_bytes(b"MZ" + bytes(600))
    out = tmp_path / "vmlinux"
    done = _fetch(out, WRENN_KERNEL_URL=src.as_uri())
    assert done.returncode == 1
    assert "not an uncompressed ELF vmlinux" in done.stderr
    assert not out.exists()


def test_an_unknown_source_is_refused(tmp_path: Path) -> None:
    done = _fetch(tmp_path / "vmlinux", WRENN_KERNEL_SOURCE="somewhere")
    assert done.returncode == 1
    assert "expected auto, firecracker-ci or debian" in done.stderr


def test_firecracker_ci_only_does_not_fall_back(tmp_path: Path) -> None:
    done = _fetch(
        tmp_path / "vmlinux",
        WRENN_KERNEL_SOURCE="firecracker-ci",
        WRENN_KERNEL_BUCKET="http://127.0.0.1:9",
    )
    assert done.returncode == 1
    assert "cannot reach the Firecracker CI kernel bucket" in done.stderr
    assert "FALLING BACK" not in done.stderr


@pytest.mark.root
def test_an_unreachable_bucket_falls_back_to_the_debian_kernel(tmp_path: Path) -> None:
    out = tmp_path / "vmlinux"
    done = _fetch(out, WRENN_KERNEL_BUCKET="http://127.0.0.1:9")  # discard port: refused
    assert done.returncode == 0, done.stderr
    assert "FALLING BACK to a kernel derived from Debian's linux-image-cloud-amd64" in done.stderr
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["source"] == "debian"
    assert meta["initrd"] == "vmlinux.initrd" and Path(f"{out}.initrd").is_file()
    assert out.read_bytes()[:4] == b"\x7fELF"
    entry = Path(done.stdout.strip().splitlines()[-1])
    assert entry.parent == Path("/var/cache/wrennd/kernels")
    assert entry.name.startswith(f"{meta['package']}_{meta['version']}-")
    again = _fetch(out, WRENN_KERNEL_BUCKET="http://127.0.0.1:9")
    assert again.returncode == 0 and f"cached in {entry}" in again.stderr
