"""verify_pages against the real kernel uffd: a child process plays the VMM
and reads all of its memory; the engine checks each block against its
generation's checksum file before installing it."""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from wrennd._native import ffi, lib
from wrennd.snapshot.checksums import ARRAY_OFFSET, MAGIC, VERSION, checksum_path
from wrennd.uffd.engine import SOURCE_ZERO
from wrennd.uffd.server import UffdServer

pytestmark = pytest.mark.uffd
MiB = 1 << 20
BS = 4096
Factory = Callable[..., Any]


def write_checksums(gen: Path) -> Path:
    data = gen.read_bytes()
    count = len(data) // BS
    crcs = [
        lib.wr_crc32c(0, ffi.from_buffer(data[i * BS : (i + 1) * BS]), BS) for i in range(count)
    ]
    path = checksum_path(gen)
    path.write_bytes(
        struct.pack("<8sIIQ", MAGIC, VERSION, BS, count) + struct.pack(f"<{count}I", *crcs)
    )
    assert path.stat().st_size == ARRAY_OFFSET + 4 * count
    return path


def flip_in_source(snap: Any, source: int) -> tuple[int, int]:
    """Flip a byte inside the first entry served from `source`: (memory offset, storage block)."""
    e = next(e for e in snap.memory.entries if e.source == source and e.length >= 2 * BS)
    gen = snap.memory.generations[source]
    storage = e.storage_offset + BS + 123
    with open(gen, "r+b") as f:
        f.seek(storage)
        b = f.read(1)
        f.seek(storage)
        f.write(bytes([b[0] ^ 0x40]))
    return e.offset + BS + 123, storage // BS


def with_checksums(snap: Any) -> Any:
    """The snapshot's memory with a checksum file per generation, of its bytes now."""
    sums = [write_checksums(g) for g in snap.memory.generations]
    return dataclasses.replace(snap.memory, checksums=sums, checksum_block_size=BS)


async def serve_reading_all(
    tmp_path: Path, kit: Any, snap: Any, memory: Any, verify_pages: bool
) -> tuple[UffdServer, Any, int, Any]:
    server = UffdServer(tmp_path / "uffd.sock", memory, verify_pages=verify_pages, prefetch=False)
    await server.start()
    size = snap.memory.memory_size
    ops = [{"op": "read", "offset": 0, "length": size, "out": "all"}]
    child = await kit.spawn_child(tmp_path, server.socket_path, [size], ops)
    result = await server.serve()
    rc = await child.finish()
    return server, result, rc, child


async def test_good_blocks_are_verified_and_served(
    tmp_path: Path, snapshot_factory: Factory, kit: Any
) -> None:
    snap = snapshot_factory(4 * MiB, generations=2)
    memory = with_checksums(snap)
    server, result, rc, child = await serve_reading_all(tmp_path, kit, snap, memory, True)
    assert rc == 0 and child.output("all") == snap.expected
    data_blocks = sum(e.length for e in snap.memory.entries if e.source != SOURCE_ZERO) // BS
    assert result.stats.verified_blocks == data_blocks
    assert result.stats.corrupt_source == -1 and server.corruption() is None
    await server.close()


async def test_a_flipped_byte_is_never_served(
    tmp_path: Path, snapshot_factory: Factory, kit: Any
) -> None:
    snap = snapshot_factory(4 * MiB, generations=2)
    memory = with_checksums(snap)
    _, block = flip_in_source(snap, 1)
    leaks = kit.LeakCheck(tmp_path)
    server, result, rc, child = await serve_reading_all(tmp_path, kit, snap, memory, True)
    assert rc == -signal.SIGKILL  # the VMM is stopped, never fed the bad page
    assert not child.outputs["all"].exists() or child.output("all") != snap.expected
    assert result.reason == "engine-stopped"
    assert result.stats.stop_error == -errno.EBADMSG
    bad = server.corruption()
    assert bad is not None
    assert bad.generation == snap.memory.generations[1] and bad.block == block
    assert f"block {block} " in str(bad)
    await server.close()
    leaks.check()


async def test_without_verify_pages_the_flip_reaches_the_guest(
    tmp_path: Path, snapshot_factory: Factory, kit: Any
) -> None:
    """What the check prevents: with verify_pages off the rot is served."""
    snap = snapshot_factory(4 * MiB, generations=2)
    memory = with_checksums(snap)
    offset, _ = flip_in_source(snap, 1)
    server, result, rc, child = await serve_reading_all(tmp_path, kit, snap, memory, False)
    assert rc == 0 and result.stats.verified_blocks == 0
    got = child.output("all")
    assert got[offset] != snap.expected[offset] and got[:offset] == snap.expected[:offset]
    await server.close()


def test_checksum_file_not_fitting_its_generation_is_refused(
    tmp_path: Path, snapshot_factory: Factory
) -> None:
    snap = snapshot_factory(1 * MiB, generations=1)
    path = write_checksums(snap.memory.generations[0])
    os.truncate(path, ARRAY_OFFSET + 4)
    memory = dataclasses.replace(snap.memory, checksums=[path], checksum_block_size=BS)
    server = UffdServer(tmp_path / "uffd.sock", memory)
    with pytest.raises(Exception, match="do not fit a generation"):
        server._make_engine(BS)
