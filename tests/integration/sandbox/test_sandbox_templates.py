"""A template from a running sandbox, then 5 clones at once: each has its own network,
disk and memory; a write in one is invisible to the others and to the template."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from wrennd.guest.client import NotFound
from wrennd.sandbox.errors import TemplateInUse, TemplateMismatch, TemplateNotFound
from wrennd_sim.fcsim.control import ControlClient
from wrennd_sim.inproc import InProcess

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd]


async def control(info: dict[str, Any], op: str, **args: Any) -> Any:
    ctl = ControlClient(Path(info["vmm"]["control_socket"]))
    try:
        return await ctl.call(op, **args)
    finally:
        await ctl.close()


async def test_template_and_five_parallel_clones(manager: InProcess, env: Any) -> None:
    src = await manager.create("base", memory_mib=64)
    await control(src, "dirty", fraction=0.1, seed=3)
    await manager.guest(src["id"]).write_file("/root/origin", b"from the source\n")
    taken = (await control(src, "checksum"))["sha256"]

    meta = await manager.create_template(src["id"], "t1")
    assert meta["memory_mib"] == 64 and meta["vcpus"] == 1
    src = manager.get(src["id"])
    assert src["state"] == "running", "a running source is resumed after the template"
    tdir = env.state_dir / "templates" / "t1"
    assert (tdir / "rootfs.ext4").is_file() and (tdir / "snapshot" / "memory.header").is_file()

    clones = await asyncio.gather(*(manager.create(template="t1") for _ in range(5)))
    ids = [c["id"] for c in clones]
    assert len({c["host_address"] for c in clones}) == 5, "each clone has its own network"
    for c in clones:
        assert (await control(c, "checksum"))["sha256"] == taken, "memory as the template's"
        assert await manager.guest(c["id"]).read_bytes("/root/origin") == b"from the source\n"
        await manager.guest(c["id"]).write_file("/root/own", c["id"].encode())
    for c in clones:
        assert await manager.guest(c["id"]).read_bytes("/root/own") == c["id"].encode()
    with pytest.raises(NotFound):
        await manager.guest(src["id"]).read_bytes("/root/own")
    late = await manager.create(template="t1")
    with pytest.raises(NotFound):
        await manager.guest(late["id"]).read_bytes("/root/own")

    # A clone pauses into a Diff on top of the template's memory and comes back intact.
    await control(clones[0], "dirty", fraction=0.02, seed=9)
    before = (await control(clones[0], "checksum"))["sha256"]
    await manager.pause(ids[0])
    back = await manager.resume(ids[0])
    assert (await control(back, "checksum"))["sha256"] == before

    with pytest.raises(TemplateMismatch, match="memory_mib=64"):
        await manager.create(template="t1", memory_mib=128)
    with pytest.raises(TemplateInUse) as in_use:
        await manager.delete_template("t1")
    assert set(in_use.value.sandbox_ids) == {*ids, late["id"]}
    assert [t["name"] for t in await manager.list_templates()] == ["t1"]

    for sid in [*ids, late["id"], src["id"]]:
        await manager.destroy(sid)
    await manager.delete_template("t1")
    assert not tdir.exists()
    with pytest.raises(TemplateNotFound):
        await manager.get_template("t1")
    assert not list((env.state_dir / "memfiles").glob("*-*")), "no generation left behind"
    assert not env.leaks()
