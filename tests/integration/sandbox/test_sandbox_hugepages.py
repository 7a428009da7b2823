"""2 MiB-backed sandboxes under fcsim: create, pause, resume and clone on real hugetlb pages
(reserved by the test), served by the engine in 2 MiB units, snapshotted at 4 KiB; and a
host whose pool is too small refuses before any VMM starts."""

from __future__ import annotations

import asyncio
import base64
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.sandbox.conftest import Env
from tests.integration.sandbox.running_daemon import Daemon
from tests.integration.sandbox.test_sandbox_jailer import (  # the fixture, for its test below
    UID,
    jail_leftovers,
    jail_settings,
    jailed,  # noqa: F401
    uids,
)
from tests.polling import wait_for
from wrennd.rpc.client import RemoteError
from wrennd.sandbox.errors import TemplateMismatch
from wrennd.sandbox.hugepages import HUGE_PAGE_SIZE, NR_HUGEPAGES, POOL, HugePagesShort, Pool
from wrennd.snapshot.store import read_header
from wrennd_sim.fcsim.control import ControlClient
from wrennd_sim.fdstore import FdStore
from wrennd_sim.inproc import InProcess

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd]
MIB = 64  # each guest: 32 huge pages
WANT = 96  # the source and a clone running at once, and room to spare


@pytest.fixture
def huge_pool() -> Iterator[int]:
    """WANT more pages in the host's 2 MiB pool for this test, given back after it (by
    count, so a concurrent user of the pool keeps its own), or a skip saying why not."""
    if not POOL.is_dir():
        pytest.skip(f"hugetlb: this kernel has no 2 MiB huge page pool ({POOL} is missing)")
    try:
        before = int(NR_HUGEPAGES.read_text())
        NR_HUGEPAGES.write_text(str(before + WANT))
        added = int(NR_HUGEPAGES.read_text()) - before
    except OSError as e:
        pytest.skip(f"hugetlb: cannot reserve 2 MiB pages via {NR_HUGEPAGES}: {e}")
    try:
        if added < WANT:
            pytest.skip(f"hugetlb: the kernel found only {added} of {WANT} 2 MiB pages to add")
        yield added
    finally:
        NR_HUGEPAGES.write_text(str(max(0, int(NR_HUGEPAGES.read_text()) - added)))


async def control(info: dict[str, Any], op: str, **args: Any) -> Any:
    ctl = ControlClient(Path(info["vmm"]["control_socket"]))
    try:
        return await ctl.call(op, **args)
    finally:
        await ctl.close()


async def checksum(info: dict[str, Any]) -> str:
    return str((await control(info, "checksum"))["sha256"])


def hugetlb_mib(pid: int) -> int:
    """How much of the VMM's memory is hugetlb pages (the kernel's count)."""
    kib = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Hugetlb:", "Shared_Hugetlb:")):
            kib += int(line.split()[1])
    return kib >> 10


def served_in_huge_units(manager: InProcess, sandbox_id: str) -> None:
    """The VMM announced 2 MiB pages in the handshake and the engine installed 2 MiB units."""
    live = manager.service.registry.get(sandbox_id).live
    assert live is not None and live.uffd is not None
    assert [r.page_size for r in live.uffd.regions] == [HUGE_PAGE_SIZE]
    stats = live.uffd.stats()
    assert stats is not None and stats.copy_pages > 0
    assert stats.copy_bytes == stats.copy_pages * HUGE_PAGE_SIZE
    assert stats.zero_bytes == stats.zero_pages * HUGE_PAGE_SIZE


def blocks_of_newest_generation(snapshot_dir: Path) -> int:
    header = read_header(snapshot_dir)
    newest = header.generations.index(header.build_id)
    return sum(e.length for e in header.mapping if e.source == newest)


async def test_a_2m_guest_runs_pauses_resumes_and_clones(
    manager: InProcess, env: Any, huge_pool: int
) -> None:
    src = await manager.create("base", memory_mib=MIB, memory_backing="2m")
    sid, snap = src["id"], env.state_dir / "sandboxes" / src["id"] / "snapshot"
    assert src["memory_backing"] == "2m"
    info = await control(src, "info")
    assert (info["page_size"], info["backend"]) == (HUGE_PAGE_SIZE, "anonymous")
    await control(src, "dirty", fraction=0.1, seed=3)
    taken = await checksum(src)
    assert hugetlb_mib(src["vmm"]["pid"]) == MIB, "every byte read came from the pool"
    assert (await manager.usage(sid))["memory_bytes"] >= MIB << 20, "hugetlb counts as memory"

    await manager.pause(sid)  # Full, ingested in 4 KiB blocks
    assert read_header(snap).block_size == 4096
    back = await manager.resume(sid)
    assert (await control(back, "info"))["page_size"] == HUGE_PAGE_SIZE
    assert await checksum(back) == taken
    served_in_huge_units(manager, sid)
    assert hugetlb_mib(back["vmm"]["pid"]) == MIB

    # Firecracker's dirty log is 4 KiB even on huge pages: a 4 KiB write is a 4 KiB Diff.
    page = bytes(range(256)) * 16
    await control(back, "write", offset=3 * HUGE_PAGE_SIZE + 5 * 4096, data=_b64(page))
    written = await checksum(back)
    await manager.pause(sid)
    assert blocks_of_newest_generation(snap) == 4096

    # The pool shrunk to nothing while it slept: refused before a VMM, still paused.
    before = int(NR_HUGEPAGES.read_text())
    NR_HUGEPAGES.write_text(str(before - Pool.read().free))
    try:
        with pytest.raises(HugePagesShort) as short:
            await manager.resume(sid)
    finally:
        NR_HUGEPAGES.write_text(str(before))
    assert short.value.data["needed"] == MIB // 2
    assert manager.get(sid)["state"] == "paused"
    back = await manager.resume(sid)
    assert await checksum(back) == written

    with pytest.raises(TemplateMismatch, match="2m pages"):
        await manager.create_template(sid, "h4", memory_backing="4k")
    meta = await manager.create_template(sid, "h2", memory_backing="2m")
    assert meta["memory_backing"] == "2m"
    clone = await manager.create(template="h2")
    assert clone["memory_backing"] == "2m"
    assert await checksum(clone) == written
    served_in_huge_units(manager, clone["id"])
    assert hugetlb_mib(clone["vmm"]["pid"]) == MIB
    with pytest.raises(TemplateMismatch, match="memory_backing=2m"):
        await manager.create(template="h2", memory_backing="4k")

    for s in (clone["id"], sid):
        await manager.destroy(s)
    await manager.delete_template("h2")
    assert not env.leaks()


async def test_a_jailed_2m_guest(jailed: Env, huge_pool: int) -> None:  # noqa: F811
    """Under the jailer the VMM maps its hugetlb memory as the jail's user (anonymous
    MAP_HUGETLB needs no privilege) and is served 2 MiB units in its chroot."""
    mgr = jailed.mgr
    info = await mgr.create("base", memory_mib=MIB, memory_backing="2m")
    sid = info["id"]
    assert uids(info["vmm"]["pid"]) == [UID] * 4
    await control(info, "dirty", fraction=0.05, seed=2)
    before = await checksum(info)
    assert hugetlb_mib(info["vmm"]["pid"]) == MIB
    await mgr.pause(sid)
    back = await mgr.resume(sid)
    assert uids(back["vmm"]["pid"]) == [UID] * 4
    assert await checksum(back) == before
    served_in_huge_units(mgr, sid)
    await mgr.destroy(sid)
    assert jail_leftovers(jail_settings(jailed)) == []
    assert jailed.leaks() == []


async def test_concurrent_creates_count_each_other(
    manager: InProcess, env: Any, huge_pool: int
) -> None:
    """Each guest needs more than half of what the pool has (with room for another user
    of the pool moving 4 pages meanwhile): of two creates at once exactly one is made,
    the other refused before its VMM, however their steps interleave."""
    pool = Pool.read()
    pages = (pool.free - pool.reserved) // 2 + 3
    made = await asyncio.gather(
        *(manager.create("base", memory_mib=2 * pages, memory_backing="2m") for _ in range(2)),
        return_exceptions=True,
    )
    ok = [m for m in made if isinstance(m, dict)]
    refused = [m for m in made if isinstance(m, HugePagesShort)]
    assert len(ok) == 1 and len(refused) == 1, made
    assert refused[0].data["promised"] == pages, "the other create's whole guest is owed"
    assert [s["id"] for s in manager.list()] == [ok[0]["id"]]
    await manager.destroy(ok[0]["id"])
    assert not env.leaks()


async def test_too_small_a_pool_is_refused_before_any_vmm_starts(
    manager: InProcess, env: Any
) -> None:
    pool = Pool.read()
    # More than the pool can give, also if another user of it frees 4 pages meanwhile.
    needed = pool.free - pool.reserved + 5
    with pytest.raises(HugePagesShort) as short:
        await manager.create("base", memory_mib=2 * needed, memory_backing="2m")
    data = short.value.data
    assert short.value.code == "resource_exhausted" and data["resource"] == "huge_pages"
    assert data["needed"] == needed and data["available"] < needed
    assert data["page_size_kib"] == 2048 and "vm.nr_hugepages" in str(short.value)
    assert manager.list() == []
    assert not list((env.state_dir / "sandboxes").iterdir()), "no record left behind"
    assert not env.leaks(), "no VMM, network or disk was made"


async def test_the_api_takes_2m_and_says_what_the_pool_lacks(
    daemon: Daemon, place: Any, huge_pool: int
) -> None:
    """A real daemon (memory filled in the background, then the engine detached): the
    params, host.stats' pool section and resource_exhausted with its counts, over JSON-RPC."""
    daemon.start()
    c = await daemon.client()
    with pytest.raises(RemoteError) as odd:
        await c.call("sandbox.create", {"image": "base", "memory_mib": 65, "memory_backing": "2m"})
    assert odd.value.type == "invalid_params" and "multiple of 2 MiB" in str(odd.value)
    sb = await c.call(
        "sandbox.create", {"image": "base", "memory_mib": MIB, "memory_backing": "2m"}
    )
    sid = sb["id"]
    assert sb["memory_backing"] == "2m"
    pool = (await c.call("host.stats"))["huge_pages"]
    assert pool["sandboxes"] == 1 and pool["page_size_kib"] == 2048
    await control(sb, "dirty", fraction=0.05, seed=1)
    taken = await checksum(sb)
    await c.call("sandbox.pause", {"id": sid})
    await c.call("sandbox.resume", {"id": sid})
    deadline = time.monotonic() + 120
    while (got := await c.call("sandbox.get", {"id": sid}))["engine"]["state"] != "detached":
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.2)
    assert hugetlb_mib(got["vmm"]["pid"]) == MIB, "the fill installed every 2 MiB page"
    assert await checksum(got) == taken
    pool = (await c.call("host.stats"))["huge_pages"]
    assert pool["promised"] == 0, "a filled guest owes the pool nothing"

    more = pool["available"] + 5  # another user of the pool may free 4 pages meanwhile
    with pytest.raises(RemoteError) as short:
        await c.call(
            "sandbox.create",
            {"image": "base", "memory_mib": 2 * more, "memory_backing": "2m"},
        )
    assert short.value.type == "resource_exhausted" and short.value.code == 1004
    data = short.value.data
    assert (data["resource"], data["needed"]) == ("huge_pages", more), data
    assert data["available"] < more and data["free"] >= data["available"]
    assert [s["id"] for s in (await c.call("sandbox.list"))["sandboxes"]] == [sid]
    await c.call("sandbox.destroy", {"id": sid})
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0
    assert not place.leaks()


@pytest.fixture
def stored_daemon(place: Any) -> Iterator[tuple[Daemon, FdStore]]:
    """A daemon run as systemd runs it, with an fd store (wrennd_sim.fdstore)."""
    store = FdStore(place.run_dir / "notify.sock")
    daemon = Daemon(place)
    daemon.fd_store = store
    yield daemon, store
    if daemon.alive():
        daemon.stop(signal.SIGTERM)
    store.close()


async def test_a_filling_2m_guest_is_handed_over(
    stored_daemon: tuple[Daemon, FdStore], place: Any, huge_pool: int
) -> None:
    """kill -9 while a 2 MiB guest's memory is still filling: the next daemon serves the
    handed-over uffd with a 2 MiB engine, and the guest's memory is whole."""
    daemon, store = stored_daemon
    slow = {"WRENND_UFFD_FILL_RATE_BYTES": str(1 << 20)}  # 64 s for the guest: still filling
    daemon.start(**slow)
    c = await daemon.client()
    sb = await c.call(
        "sandbox.create", {"image": "base", "memory_mib": MIB, "memory_backing": "2m"}
    )
    sid = sb["id"]
    await control(sb, "dirty", fraction=0.3, seed=5)
    want = await checksum(sb)
    await c.call("sandbox.pause", {"id": sid})
    got = await c.call("sandbox.resume", {"id": sid})
    assert got["engine"]["state"] == "filling", got
    pid = got["vmm"]["pid"]
    await wait_for(
        lambda: f"uffd-{sid}" in store.names()
    )  # sd_notify is a datagram: read a moment later
    await c.close()
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL

    daemon.start(**slow)
    c = await daemon.client()
    got = await c.call("sandbox.get", {"id": sid})
    assert got["state"] == "running" and got["vmm"]["pid"] == pid, got
    assert got["engine"]["state"] != "detached", got
    assert await checksum(got) == want
    assert hugetlb_mib(pid) == MIB
    await c.call("sandbox.destroy", {"id": sid})
    await c.close()
    assert daemon.stop(signal.SIGTERM) == 0
    assert not place.leaks()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
