"""The agent moves files: streamed read/write, atomic replace, list, stat, mkdir -p, remove -r."""

# The tests check the agent's work on disk directly; blocking there is the point.
# ruff: noqa: ASYNC240

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.polling import wait_for
from wrennd.guest.client import (
    AgentUnavailable,
    AlreadyExists,
    BadRequest,
    DirectoryNotEmpty,
    GuestClient,
    IsADirectory,
    NotADirectory,
    NotFound,
    PermissionDenied,
)


async def test_write_read_roundtrip_mode_owner(client: GuestClient, agent_root: Path) -> None:
    data = os.urandom(3 * 256 * 1024 + 17)  # several chunks, not a multiple of one
    info = await client.write_file("/f.bin", data, mode=0o640, uid=1234, gid=4321)
    assert (info.type, info.size, info.mode, info.uid, info.gid) == (
        "file",
        len(data),
        0o640,
        1234,
        4321,
    )
    assert await client.read_bytes("/f.bin") == data
    st = (agent_root / "f.bin").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 4321)


async def test_write_replaces_atomically_and_keeps_mode(
    client: GuestClient, agent_root: Path
) -> None:
    target = agent_root / "conf"
    target.write_bytes(b"old contents that are longer")
    target.chmod(0o600)
    inode = target.stat().st_ino

    async def chunks():  # type: ignore[no-untyped-def]
        for part in (b"new ", b"contents"):
            yield part

    await client.write_file("/conf", chunks())
    assert target.read_bytes() == b"new contents"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # kept from the old file
    assert target.stat().st_ino != inode  # a new file renamed over the old one
    assert sorted(p.name for p in agent_root.iterdir()) == ["conf"]  # no temp file left
    await client.write_file("/empty", b"")
    assert (agent_root / "empty").read_bytes() == b""


async def test_an_aborted_upload_leaves_the_old_file(client: GuestClient, agent_root: Path) -> None:
    target = agent_root / "keep"
    target.write_bytes(b"original")

    async def broken():  # type: ignore[no-untyped-def]
        yield b"x" * (1 << 20)
        await asyncio.sleep(0.1)
        raise RuntimeError("the host's source failed mid-way")

    with pytest.raises(AgentUnavailable, match="mid-way"):  # aiohttp wraps it as a send error
        await client.write_file("/keep", broken())
    await wait_for(
        lambda: sorted(p.name for p in agent_root.iterdir()) == ["keep"],
        what="no temporary file left behind",
    )
    assert target.read_bytes() == b"original"


async def test_stat_and_list(client: GuestClient, agent_root: Path) -> None:
    (agent_root / "d").mkdir()
    (agent_root / "d" / "b.txt").write_text("hello")
    (agent_root / "d" / "a").mkdir()
    (agent_root / "d" / "link").symlink_to("b.txt")
    entries = await client.list_dir("/d")
    assert [(e.name, e.type, e.path) for e in entries] == [
        ("a", "dir", "/d/a"),
        ("b.txt", "file", "/d/b.txt"),
        ("link", "symlink", "/d/link"),
    ]
    assert entries[2].target == "b.txt"
    st = await client.stat("/d/b.txt")
    assert (st.size, st.type) == (5, "file")
    assert (await client.stat("/")).type == "dir"
    assert await client.list_dir("/d/a") == []


async def test_paths_stay_under_the_root(client: GuestClient, agent_root: Path) -> None:
    (agent_root / "inside").write_text("x")
    assert (await client.stat("/../../inside")).size == 1
    with pytest.raises(NotFound):
        await client.stat("/../../etc/passwd")  # the host's exists; the root's does not


async def test_mkdir(client: GuestClient, agent_root: Path) -> None:
    assert await client.mkdir("/a/b/c", mode=0o700) is True
    assert stat.S_IMODE((agent_root / "a/b/c").stat().st_mode) == 0o700
    assert await client.mkdir("/a/b/c") is False  # -p: existing is fine
    with pytest.raises(AlreadyExists):
        await client.mkdir("/a/b/c", parents=False)
    with pytest.raises(NotFound):
        await client.mkdir("/x/y", parents=False)
    (agent_root / "file").write_text("x")
    with pytest.raises(AlreadyExists):
        await client.mkdir("/file")
    with pytest.raises(NotADirectory):
        await client.mkdir("/file/sub")


async def test_remove(client: GuestClient, agent_root: Path) -> None:
    (agent_root / "t/u").mkdir(parents=True)
    (agent_root / "t/u/f").write_text("x")
    (agent_root / "t/l").symlink_to("/")  # a link is removed, never followed
    with pytest.raises(DirectoryNotEmpty):
        await client.remove("/t")
    await client.remove("/t/l")
    await client.remove("/t", recursive=True)
    assert not (agent_root / "t").exists()
    with pytest.raises(NotFound):
        await client.remove("/t")
    with pytest.raises(BadRequest, match="root"):
        await client.remove("/", recursive=True)
    assert agent_root.is_dir()


async def test_file_errors(client: GuestClient, agent_root: Path) -> None:
    (agent_root / "file").write_text("x")
    (agent_root / "dir").mkdir()
    with pytest.raises(NotFound) as err:
        await client.read_bytes("/missing")
    assert err.value.details["path"] == "/missing"
    with pytest.raises(IsADirectory):
        await client.read_bytes("/dir")
    with pytest.raises(IsADirectory):
        await client.write_file("/dir", b"x")
    with pytest.raises(NotFound):
        await client.write_file("/nodir/f", b"x")
    with pytest.raises(NotADirectory):
        await client.stat("/file/x")
    with pytest.raises(NotADirectory):
        await client.list_dir("/file")
    with pytest.raises(BadRequest, match="absolute path"):
        await client.stat("relative")
    with pytest.raises(BadRequest, match="no such user"):
        await client.write_file("/f2", b"x", user="no-such-user-here")


@pytest.mark.root
async def test_permission_denied(start_agent: Callable[..., object], shared_tmp: Path) -> None:
    root = shared_tmp / "shared"
    root.mkdir()
    (root / "private").mkdir(mode=0o700)
    (root / "secret").write_text("s")
    (root / "secret").chmod(0o600)
    root.chmod(0o755)
    agent = start_agent(root=root, user="nobody")  # root would bypass the permission bits
    async with GuestClient(agent.url) as c:  # type: ignore[attr-defined]
        with pytest.raises(PermissionDenied) as err:
            await c.read_bytes("/secret")
        assert err.value.code == "EACCES" and err.value.status == 403
        with pytest.raises(PermissionDenied):
            await c.write_file("/private/f", b"x")
        with pytest.raises(PermissionDenied):
            await c.list_dir("/private")
        with pytest.raises(PermissionDenied):
            await c.remove("/secret")  # the directory is root's
