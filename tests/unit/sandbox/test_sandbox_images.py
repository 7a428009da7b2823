"""Image validation opens only regular files, never blocks, and tells nothing about files
the caller may not read (issue 20 items 1 and 6)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from wrennd.sandbox import images
from wrennd.sandbox.errors import BadImage


def _ext4_like(path: Path, size: int = 8192) -> Path:
    data = bytearray(size)
    data[images._MAGIC_OFFSET : images._MAGIC_OFFSET + 2] = (0xEF53).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    return path


async def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(fifo)
    for offered in (fifo, link):
        # A blocking open would wait for a writer forever: the thread would never return.
        with pytest.raises(BadImage, match="not a regular file"):
            await asyncio.wait_for(
                asyncio.to_thread(images.register, tmp_path / "images", "x", offered), 5
            )
    assert not (tmp_path / "images" / "x.ext4").exists()


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null", "/"])
def test_devices_and_directories_are_refused(tmp_path: Path, path: str) -> None:
    with pytest.raises(BadImage, match="not a regular file"):
        images.register(tmp_path / "images", "x", Path(path))


def test_errors_do_not_reveal_the_size(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"x" * 651)
    secret.chmod(0o600)
    with pytest.raises(BadImage) as refused:
        images.register(tmp_path / "images", "x", secret)
    assert "651" not in str(refused.value)
    aligned = tmp_path / "aligned"
    aligned.write_bytes(b"y" * 4096 * 3)
    with pytest.raises(BadImage) as refused2:
        images.register(tmp_path / "images", "y", aligned)
    # Both refusals read alike: which rule failed would tell the size apart.
    assert str(refused.value).replace(str(secret), "P") == str(refused2.value).replace(
        str(aligned), "P"
    )


def test_a_good_image_is_copied_read_only(tmp_path: Path) -> None:
    src = _ext4_like(tmp_path / "src.img")
    made = images.register(tmp_path / "images", "good", src)
    assert Path(made.path).read_bytes() == src.read_bytes()
    assert made.size_bytes == 8192
