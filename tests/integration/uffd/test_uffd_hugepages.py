"""2 MiB pages: hugetlb (reserved for the test when the kernel lets us) and
transparent huge pages on base-page mappings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wrennd.uffd.engine import SOURCE_ZERO, MapEntry
from wrennd.uffd.server import SnapshotMemory, UffdServer

pytestmark = pytest.mark.uffd
HUGE = 2 << 20
NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@pytest.fixture
def hugetlb_pages() -> Iterator[int]:
    """Reserve 4 more 2 MiB hugetlb pages for the test, or skip saying why not."""
    need = 4
    try:
        if meminfo("Hugepagesize") != 2048:
            pytest.skip(
                f"hugetlb: default huge page size is {meminfo('Hugepagesize')} kB, not 2048"
            )
        original = int(NR_HUGEPAGES.read_text())
        if meminfo("HugePages_Free") < need:
            NR_HUGEPAGES.write_text(str(original + need))
    except (OSError, KeyError) as e:
        pytest.skip(f"hugetlb: cannot reserve 2 MiB pages via {NR_HUGEPAGES}: {e}")
    try:
        free = meminfo("HugePages_Free")
        if free < need:
            pytest.skip(f"hugetlb: only {free} free 2 MiB pages after asking for {need} more")
        yield need
    finally:
        if int(NR_HUGEPAGES.read_text()) != original:
            NR_HUGEPAGES.write_text(str(original))


def huge_snapshot(directory: Path) -> tuple[SnapshotMemory, bytes]:
    """4 huge units: one whole-unit copy, one zero unit, two assembled from
    4 KiB-granular entries of two generations and zero-fill."""
    size = 4 * HUGE
    gens = [os.urandom(size), os.urandom(size)]
    entries = [MapEntry(0, HUGE, 0, 1), MapEntry(HUGE, HUGE, 0, SOURCE_ZERO)]
    expected = bytearray(gens[1][:HUGE] + bytes(HUGE))
    off, i = 2 * HUGE, 0
    while off < size:
        length = min((i % 7 + 1) * 4096 * 5, size - off)
        source = (0, 1, SOURCE_ZERO)[i % 3]
        entries.append(MapEntry(off, length, off if source != SOURCE_ZERO else 0, source))
        expected += gens[source][off : off + length] if source != SOURCE_ZERO else bytes(length)
        off += length
        i += 1
    paths = []
    for n, g in enumerate(gens):
        p = directory / f"gen{n}"
        p.write_bytes(g)
        paths.append(p)
    return SnapshotMemory(size, HUGE, entries, paths), bytes(expected)


async def test_hugetlb_every_byte_and_remove(tmp_path: Path, kit: Any, hugetlb_pages: int) -> None:
    leaks = kit.LeakCheck(tmp_path)
    memory, expected = huge_snapshot(tmp_path)
    server = UffdServer(tmp_path / "u.sock", memory, batch_bytes=2 * HUGE)
    await server.start()
    ops = [
        {"op": "read", "offset": 0, "length": 4 * HUGE, "out": "all"},
        {"op": "discard", "offset": 0, "length": HUGE},
        {"op": "read", "offset": 0, "length": HUGE, "out": "removed"},
    ]
    result, child = await kit.serve_child(server, tmp_path, [4 * HUGE], ops, page_size=HUGE)
    assert child.output("all") == expected
    assert child.output("removed") == bytes(HUGE)
    s = result.stats
    assert s.stop_error == 0
    # units: 4 assembled and copied (hugetlb has no zeropage: the all-zero one
    # too), then the removed one as zeros
    assert s.copy_pages == 4 and s.zero_pages == 1
    assert s.removes == 1 and s.removed_pages == 1 and s.removed_faults == 1
    await server.close()
    leaks.check()


@pytest.fixture
def thp_available() -> None:
    try:
        mode = THP_ENABLED.read_text()
    except OSError as e:
        pytest.skip(f"THP: kernel without transparent huge pages ({THP_ENABLED}: {e})")
    if "[never]" in mode:
        pytest.skip(f"THP: disabled on this host ({THP_ENABLED} = {mode.strip()})")


@pytest.mark.usefixtures("thp_available")
async def test_transparent_huge_pages(tmp_path: Path, kit: Any, snapshot_factory: Any) -> None:
    snap = snapshot_factory(8 << 20)
    server = UffdServer(tmp_path / "u.sock", snap.memory)
    await server.start()
    ops = [{"op": "read", "offset": 0, "length": 8 << 20, "out": "all"}]
    _, child = await kit.serve_child(server, tmp_path, [8 << 20], ops, thp=True)
    assert child.output("all") == snap.expected
    await server.close()
