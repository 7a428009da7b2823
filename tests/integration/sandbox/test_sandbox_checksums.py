"""Generation checksums at resume, under fcsim: rot in a paused sandbox's memory
stops the resume with snapshot_corrupt naming the generation and block; a
snapshot without checksums (written before they existed) still resumes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from wrennd.sandbox.errors import SnapshotCorrupt
from wrennd.snapshot import read_prefetch_map
from wrennd.snapshot.checksums import store_checksum_path
from wrennd.snapshot.store import read_header
from wrennd_sim.fcsim.control import ControlClient
from wrennd_sim.inproc import InProcess

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd]

MEM_MIB = 64


async def checksum(info: dict[str, object], dirty: float = 0.0) -> str:
    """The guest memory's checksum, after writing data into `dirty` of its pages."""
    vmm = info["vmm"]
    assert isinstance(vmm, dict)
    ctl = ControlClient(Path(vmm["control_socket"]))
    try:
        if dirty:
            assert (await ctl.call("dirty", fraction=dirty, seed=7))["ok"]
        return await ctl.checksum()
    finally:
        await ctl.close()


def first_prefetched_block(snapshot_dir: Path, store: Path) -> tuple[Path, int]:
    """The generation file and storage offset of the first data block the
    resume's prefetch installs: the prefetch thread meets it at once."""
    header = read_header(snapshot_dir)
    bs = header.block_size
    for offset, length in read_prefetch_map(snapshot_dir):
        for block in range(offset, offset + length, bs):
            e = next(e for e in header.mapping if e.offset <= block < e.offset + e.length)
            if not e.is_zero:
                gen = store / str(header.generations[e.source])
                return gen, e.storage_offset + block - e.offset
    raise AssertionError("the prefetch map names no data block")


def flip(path: Path, offset: int) -> None:
    fd = os.open(path, os.O_RDWR)  # root: the file's 0444 does not stop us (nor rot)
    try:
        b = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([b[0] ^ 0x01]), offset)
    finally:
        os.close(fd)


async def test_rot_stops_the_resume_and_old_snapshots_still_resume(
    manager: InProcess, env: Any
) -> None:
    info = await manager.create("base", memory_mib=MEM_MIB)
    sid = info["id"]
    before = await checksum(info, dirty=0.25)
    await manager.pause(sid)
    # A resume that touches all memory, then a Diff pause: the prefetch map
    # now holds the pages touched.
    assert await checksum(await manager.resume(sid)) == before
    await manager.pause(sid)
    await manager.settled(sid)  # the prefetch map is written after the answer
    snapshot_dir = env.state_dir / "sandboxes" / sid / "snapshot"
    store = env.state_dir / "memfiles"
    gen, offset = first_prefetched_block(snapshot_dir, store)
    flip(gen, offset + 17)

    with pytest.raises(SnapshotCorrupt) as err:
        await manager.resume(sid)
    bs = read_header(snapshot_dir).block_size
    assert err.value.data["file"].endswith(gen.name)
    assert err.value.data["block"] == offset // bs
    assert err.value.data["generation"] == gen.name
    assert f"block {offset // bs} " in str(err.value)
    assert manager.get(sid)["state"] == "paused"  # nothing lost: still resumable once repaired

    # Repaired, and its checksums removed as if written by an older wrennd: it
    # resumes unchecked, with the memory it had.
    flip(gen, offset + 17)
    for g in read_header(snapshot_dir).generations:
        store_checksum_path(store, g).unlink()
    resumed = await manager.resume(sid)
    assert await checksum(resumed) == before
    await manager.destroy(sid)
    assert not env.leaks()


async def test_scrub_finds_rot_in_paused_sandboxes_and_templates(
    manager: InProcess, env: Any
) -> None:
    info = await manager.create("base", memory_mib=MEM_MIB)
    sid = info["id"]
    await checksum(info, dirty=0.25)
    await manager.pause(sid)
    await manager.create_template(sid, "rotting")
    scrubber = manager.service.scrubber
    assert await scrubber.run_pass() == []
    stats = scrubber.stats()
    assert stats["passes"] == 1 and stats["last_pass"]["snapshots"] == 2
    assert stats["bytes_checked"] > 0 and stats["last_pass"]["unchecked_generations"] == 0

    snapshot_dir = env.state_dir / "sandboxes" / sid / "snapshot"
    store = env.state_dir / "memfiles"
    header = read_header(snapshot_dir)
    e = next(e for e in header.mapping if not e.is_zero)
    gen = store / str(header.generations[e.source])
    flip(gen, e.storage_offset + 3)  # the template shares this generation by hard link
    corrupt = await scrubber.run_pass()
    assert {(c["kind"], c["name"]) for c in corrupt} == {("sandbox", sid), ("template", "rotting")}
    block = e.storage_offset // header.block_size
    assert all(c["generation"] == gen.name and c["block"] == block for c in corrupt)
    assert scrubber.stats()["corrupt"] == corrupt
    flip(gen, e.storage_offset + 3)
    await manager.destroy(sid)
    await manager.delete_template("rotting")
