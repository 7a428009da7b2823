"""Host usage counts what a sandbox really adds: extents it shares are not its cost."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from wrennd.sandbox.usage import allocated, exclusive_bytes

pytestmark = [pytest.mark.root]

MIB = 1 << 20


def test_reflink_shares_and_sparse_holes_cost_nothing(btrfs_root: Path, tmp_path: Path) -> None:
    d = btrfs_root / f"usage-{os.getpid()}"
    d.mkdir()
    try:
        base, clone = d / "base", d / "clone"
        base.write_bytes(os.urandom(4 * MIB))
        subprocess.run(["cp", "--reflink=always", base, clone], check=True)
        assert exclusive_bytes(clone) == 0
        assert allocated(clone) >= 4 * MIB, "st_blocks counts shared extents too"
        with clone.open("r+b") as f:
            f.seek(MIB)
            f.write(os.urandom(MIB))
        assert MIB <= exclusive_bytes(clone) <= MIB + 256 * 1024
        sparse = d / "sparse"
        with sparse.open("wb") as f:
            f.truncate(1 << 30)
            f.write(b"x")
        assert allocated(sparse) <= 64 * 1024 and exclusive_bytes(sparse) <= 64 * 1024
        assert allocated(d) >= allocated(base) + allocated(sparse)
        assert exclusive_bytes(d / "missing") == 0
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()
