"""Images: registered from a path (validated, read-only), listed, refused deletion in use."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest

from wrennd.sandbox import errors
from wrennd.sandbox.errors import ImageNotFound
from wrennd_sim.inproc import InProcess

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd]


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(1 << 20)


async def test_register_list_use_delete(manager: InProcess, env: Any) -> None:
    base = env.state_dir / "images" / "base.ext4"
    made = await manager.register_image("second", base)
    path = Path(made["path"])
    assert path == env.state_dir / "images" / "second.ext4"
    assert await asyncio.to_thread(_head, path) == await asyncio.to_thread(_head, base)
    mode = (await asyncio.to_thread(path.stat)).st_mode
    assert stat.S_IMODE(mode) == 0o400, "read-only once registered, and private"
    assert {i["name"] for i in await manager.list_images()} == {"base", "second"}

    with pytest.raises(errors.ImageExists):
        await manager.register_image("second", base)
    bogus = env.state_dir / "bogus.img"
    bogus.write_bytes(b"\0" * 8192)
    with pytest.raises(errors.BadImage, match="superblock"):
        await manager.register_image("bogus", bogus)
    odd = env.state_dir / "odd.img"
    odd.write_bytes(b"\0" * 1000)
    with pytest.raises(errors.BadImage, match="multiple of 512"):
        await manager.register_image("odd", odd)
    with pytest.raises(ImageNotFound):
        await manager.register_image("../x", base)
    assert not list((env.state_dir / "images").glob(".*")), "no temporary left"

    sb = await manager.create("second", memory_mib=64)
    listed = {i["name"]: i for i in await manager.list_images()}
    assert listed["second"]["used_by"] == [sb["id"]]
    with pytest.raises(errors.ImageInUse) as in_use:
        await manager.delete_image("second")
    assert in_use.value.users == [sb["id"]]
    await manager.destroy(sb["id"])
    await manager.delete_image("second")
    assert not await asyncio.to_thread(path.exists)
    with pytest.raises(ImageNotFound):
        await manager.delete_image("second")
