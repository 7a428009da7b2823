#!/usr/bin/env python3
"""Fault-in benchmark: the native UFFD engine against its baselines, side by side.

One run measures every configuration side by side.  This process plays
wrennd (asyncio loop with a lag probe, UffdServer, engine, baselines); one
child process (bench/faultin_guest.py) plays Firecracker for the whole run:
it maps guest memory (default 256 MiB) as Firecracker does, sends the uffd
handshake and touches pages with the native toucher, timing each first
touch.  Handlers compared:

  engine      UffdServer + native engine, default batch (uffd_batch_bytes)
  engine-b1   the same with batch = one page
  kernel      no uffd: the flat memfile mapped MAP_PRIVATE (Firecracker's File backend)
  minimal     a minimal C handler: read one message, copy one page, no lookup
  engine-verify  the engine with verify_pages: each block checked against its
              generation's CRC32C before it is installed (the daemon's default
              when this costs <= 15 %; ratios: verify_pages_cost)

Patterns: sequential, random, ws10 (10 % of memory in 64 KiB clusters, in
random order), each read and write, warm page cache; sequential and random
reads also cold (drop_caches, root only).  The engine's ws10 read is run
again with the working set recorded by the first run as its prefetch map.

The snapshot is a two-generation chain with zero-fill entries; the flat
memfile is its exported image.

Then the chain fixtures (bench/faultin_fixtures.py), built the way a real
chain is: "chain3" and "chain10", a Full image of realistic data/zero runs plus
3 or 10 Diff generations of scattered single dirty pages (5 % each), and
"interleaved", data and zero pages at random.  On each: sequential read warm
and cold, and random read warm, by the engine, the engine with one page per
fault (engine-b1) and kernel paging; --copy-modes adds the engine with each
install strategy forced (engine-runs, engine-bounce: how AUTO's rule was
chosen).

Writes JSON, PNG plots and a markdown table to --out and prints the ratios
the issues set goals for.

    .venv/bin/python bench/faultin.py [--size-mib 256] [--out bench/results/faultin]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import dataclasses
import json
import os
import random
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faultin_fixtures import build_chain, with_checksums
from faultin_report import LEGACY, VERIFY_PAIR, markdown, plots, ratios

from wrennd import config, features
from wrennd.uffd import handshake
from wrennd.uffd.engine import DEFAULT_WINDOW_MAX_BYTES, SOURCE_ZERO, MapEntry
from wrennd.uffd.server import SnapshotMemory, UffdServer
from wrennd_sim import uffd_peer
from wrennd_sim._simnative import ffi, lib

PAGE = uffd_peer.BASE_PAGE_SIZE
MiB = 1 << 20
CLUSTER_PAGES = 16
CHAINS = {"chain3": (3, False), "chain10": (10, False), "interleaved": (0, True)}


@dataclass
class Fixture:
    size: int
    flat: Path  # the exported memory image
    memory: SnapshotMemory
    checked: SnapshotMemory = field(init=False)  # the same with checksum files

    def __post_init__(self) -> None:
        self.checked = with_checksums(self.memory)


def build_fixture(directory: Path, size: int, seed: int) -> Fixture:
    """gen0: a full image; gen1: a Diff with ~10 % of pages at their own offset;
    ~15 % of memory zero-fill.  The flat file is what the chain reads as."""
    rng = random.Random(seed)
    npages = size // PAGE
    image = bytearray(os.urandom(size))
    source = bytearray(npages)  # 0, 1, or 2 = zero
    p = 0
    while p < npages:
        run = rng.randint(1, 64)
        kind = rng.choices((0, 1, 2), weights=(75, 10, 15))[0]
        source[p : p + run] = bytes([kind]) * min(run, npages - p)
        p += run
    gen0 = bytes(image)
    gen1 = bytearray(size)
    diff = os.urandom(size // 8)
    entries: list[MapEntry] = []
    p = 0
    while p < npages:
        kind, q = source[p], p
        while q < npages and source[q] == kind:
            q += 1
        lo, hi = p * PAGE, q * PAGE
        if kind == 2:
            image[lo:hi] = bytes(hi - lo)
            entries.append(MapEntry(lo, hi - lo, 0, SOURCE_ZERO))
        elif kind == 1:
            chunk = (diff * (1 + (hi - lo) // len(diff)))[: hi - lo]
            gen1[lo:hi] = chunk
            image[lo:hi] = chunk
            entries.append(MapEntry(lo, hi - lo, lo, 1))
        else:
            entries.append(MapEntry(lo, hi - lo, lo, 0))
        p = q
    paths = [directory / "gen0", directory / "gen1", directory / "flat"]
    for path, data in zip(paths, (gen0, gen1, image), strict=True):
        with open(path, "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
    return Fixture(size, paths[2], SnapshotMemory(size, PAGE, entries, paths[:2]))


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3")


def pct(values: list[int], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return float(s[min(len(s) - 1, int(q * len(s)))])


@dataclass
class LagProbe:
    """Measures how late a 1 ms sleep wakes up: the event loop's lag."""

    samples: list[float] = field(default_factory=list)
    running: bool = True

    async def run(self) -> None:
        while self.running:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            self.samples.append(time.perf_counter() - t - 0.001)

    def take(self) -> list[float]:
        out, self.samples = self.samples, []
        return out


class Guest:
    """The child process playing Firecracker (bench/faultin_guest.py)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(cls, cpu: int | None = None) -> Guest:
        script = Path(__file__).with_name("faultin_guest.py")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        if cpu is not None:
            os.sched_setaffinity(proc.pid, {cpu})
        return cls(proc)

    async def send(self, obj: dict[str, Any] | str) -> None:
        assert self.proc.stdin is not None
        text = obj if isinstance(obj, str) else json.dumps(obj)
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 600)
        if not line:
            raise RuntimeError(f"guest process died (status {await self.proc.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    async def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the guest's command loop ends at EOF
        await self.proc.wait()


class Bench:
    def __init__(
        self, fx: Fixture, workdir: Path, guest: Guest, probe: LagProbe, seed: int
    ) -> None:
        self.fx = fx
        self.workdir = workdir
        self.guest = guest
        self.probe = probe
        self.seed = seed
        self.loop = asyncio.get_running_loop()
        self.lat_path = workdir / "lat"

    def command(self, cmd: str, pattern: str, write: bool, **kw: Any) -> dict[str, Any]:
        return {"cmd": cmd, "size": self.fx.size, "pattern": pattern, "seed": self.seed,
                "write": write, "lat": str(self.lat_path), **kw}  # fmt: skip

    async def touch(self, settle: bool = True) -> dict[str, Any]:
        """The guest is ready: let it touch, measure, collect its latencies.

        settle: first let the lag probe report lag from set-up (10 ms), so it
        is not counted; off where a head start would skew the result (prefetch)."""
        if settle:
            await asyncio.sleep(0.01)
        self.probe.take()
        await self.guest.send("go")
        done = await self.guest.answer()
        lag = self.probe.take()
        lat = array.array("Q")
        lat.frombytes(self.lat_path.read_bytes())
        values = lat.tolist()
        return {
            "seconds": done["seconds"],
            "touched_pages": done["pages"],
            "lat_p50_us": pct(values, 0.5) / 1e3,
            "lat_p99_us": pct(values, 0.99) / 1e3,
            "loop_lag_p99_ms": pct([int(x * 1e9) for x in lag], 0.99) / 1e6,
            "_lat": values,
        }

    async def engine(
        self,
        pattern: str,
        write: bool,
        batch: int,
        prefetch: Any = (),
        prefetch_run: bool = False,
        window: int = DEFAULT_WINDOW_MAX_BYTES,
        copy_mode: str = "auto",
        verify: bool = False,
    ) -> dict[str, Any]:
        memory = self.fx.checked if verify else self.fx.memory
        memory = dataclasses.replace(memory, prefetch=list(prefetch))
        server = UffdServer(
            self.workdir / "uffd.sock", memory, batch_bytes=batch, window_max_bytes=window,
            copy_mode=copy_mode, verify_pages=verify,
        )  # fmt: skip
        await server.start()
        serving = asyncio.ensure_future(server.serve())
        try:
            await self.guest.send(
                self.command("uffd", pattern, write, socket=str(server.socket_path))
            )
            assert (await self.guest.answer())["ready"]
            await server.ready.wait()
            t_ready = time.perf_counter()
            r = await self.touch(settle=not prefetch_run)
            # from the engine's start (the VM resuming) until the guest is done
            r["resume_seconds"] = time.perf_counter() - t_ready
            result = await serving  # the guest unmapped and closed: EOF
        finally:
            if not serving.done():
                server.stop()
                await asyncio.wait([serving])
            await server.close()
        s = result.stats
        r.update(
            faults=s.faults,
            installed_bytes=s.copy_bytes + s.zero_bytes,
            prefetch_pages=s.prefetch_pages,
            engine_p50_us=s.latency_percentile_ns(0.5) / 1e3,
            bounce_batches=s.bounce_batches,
            window_grows=s.window_grows,
            verified_blocks=s.verified_blocks,
            working_set=result.working_set,
        )
        assert s.verified_blocks > 0 if verify else s.verified_blocks == 0
        return r

    async def minimal(self, pattern: str, write: bool) -> dict[str, Any]:
        path = self.workdir / "minimal.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(1)
        listener.setblocking(False)
        fd = os.open(self.fx.flat, os.O_RDONLY | os.O_CLOEXEC)
        try:
            await self.guest.send(self.command("uffd", pattern, write, socket=str(path)))
            conn, _ = await self.loop.sock_accept(listener)
            with conn:
                conn.setblocking(True)
                msg, fds, _, _ = await self.loop.run_in_executor(
                    None, socket.recv_fds, conn, 65536, 1
                )
                region = handshake.parse(msg)[0]
                handle = ffi.new("struct wr_minimal **")
                rc = lib.wr_minimal_start(
                    fds[0], region.base_host_virt_addr, region.size, PAGE, fd, handle
                )
                if rc < 0:
                    os.close(fds[0])
                    raise OSError(-rc, "minimal handler")
                try:
                    assert (await self.guest.answer())["ready"]
                    r = await self.touch()
                    faults = lib.wr_minimal_faults(handle[0])
                finally:
                    lib.wr_minimal_stop(handle[0])
        finally:
            os.close(fd)
            listener.close()
            path.unlink()
        r.update(faults=faults, installed_bytes=faults * PAGE)
        return r

    async def kernel(self, pattern: str, write: bool) -> dict[str, Any]:
        await self.guest.send(self.command("file", pattern, write, path=str(self.fx.flat)))
        assert (await self.guest.answer())["ready"]
        r = await self.touch()
        r.update(faults=None, installed_bytes=None)
        return r


def warm(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(8 * MiB):
                pass


def handlers_of(
    b: Bench, batch: int, names: list[str]
) -> dict[str, Callable[[str, bool], Awaitable[dict[str, Any]]]]:
    every: dict[str, Callable[[str, bool], Awaitable[dict[str, Any]]]] = {
        "engine": lambda o, w: b.engine(o, w, batch),
        "engine-b1": lambda o, w: b.engine(o, w, PAGE, window=PAGE),
        "engine-runs": lambda o, w: b.engine(o, w, batch, copy_mode="runs"),
        "engine-bounce": lambda o, w: b.engine(o, w, batch, copy_mode="bounce"),
        "engine-verify": lambda o, w: b.engine(o, w, batch, verify=True),
        "kernel": b.kernel,
        "minimal": b.minimal,
    }
    return {n: every[n] for n in names}


def with_repeats(plan: list[tuple[str, str, str, str]], n: int) -> list[tuple[str, str, str, str]]:
    """Each scenario's engine / engine-verify pair run n times, alternating, right
    after the scenario's other handlers: on a busy host the median of
    alternating runs is what tells a 10 % cost from noise."""
    out: list[tuple[str, str, str, str]] = []
    for i, step in enumerate(plan):
        out.append(step)
        last_of_scenario = i + 1 == len(plan) or plan[i + 1][1:] != step[1:]
        if last_of_scenario and n > 1:
            out += [(h, step[1], step[2], step[3]) for _ in range(n - 1) for h in VERIFY_PAIR]
    return out


async def run_plan(
    b: Bench, fixture: str, plan: list[tuple[str, str, str, str]], batch: int
) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    handlers = handlers_of(b, batch, sorted({h for h, _, _, _ in plan}))
    rows = []
    for h, p, rw, cache in plan:
        if cache == "cold":
            await loop.run_in_executor(None, drop_caches)
        else:  # warm: every file fully in the page cache
            await loop.run_in_executor(None, warm, [b.fx.flat, *b.fx.memory.generations])
        r = await handlers[h](p, rw == "write")
        r.update(handler=h, pattern=p, rw=rw, cache=cache, fixture=fixture)
        rows.append(r)
        print(f"{fixture:11} {h:13} {p:10} {rw:5} {cache}: {r['seconds'] * 1e3:9.1f} ms",
              file=sys.stderr)  # fmt: skip
    return rows


async def prefetch_pair(b: Bench, batch: int) -> list[dict[str, Any]]:
    """prefetch off (records the working set) vs on (prefetches that record)"""
    loop = asyncio.get_running_loop()
    files = [b.fx.flat, *b.fx.memory.generations]
    await loop.run_in_executor(None, warm, files)
    off = await b.engine("ws10", False, batch, prefetch_run=True)
    await loop.run_in_executor(None, warm, files)
    on = await b.engine("ws10", False, batch, prefetch=off["working_set"], prefetch_run=True)
    for name, r in (("prefetch-off", off), ("prefetch-on", on)):
        r.update(handler="engine", pattern="ws10", rw="read", cache="warm", variant=name)
        r["fixture"] = LEGACY
        ms = r["resume_seconds"] * 1e3
        print(f"engine    ws10 {name}: {ms:.1f} ms, {r['faults']} faults", file=sys.stderr)
    return [off, on]


async def run_chains(
    args: argparse.Namespace, workdir: Path, guest: Guest, probe: LagProbe, batch: int, cold: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    loop = asyncio.get_running_loop()
    size = args.size_mib * MiB
    names = ["engine", "engine-verify", "engine-b1", "kernel"]
    names += ["engine-runs", "engine-bounce"] if args.copy_modes else []
    names = VERIFY_PAIR if args.verify_only else names
    scen = [("sequential", "read", "warm"), ("sequential", "write", "warm")]
    scen += [("random", "read", "warm")]
    scen += [("sequential", "read", "cold")] if cold else []
    rows: list[dict[str, Any]] = []
    facts = {}
    for name in args.fixtures:
        diffs, interleaved = CHAINS[name]
        d = workdir / name
        d.mkdir()
        flat, memory, facts[name] = await loop.run_in_executor(
            None, build_chain, d, size, PAGE, args.seed, diffs, interleaved
        )
        fx = await loop.run_in_executor(None, Fixture, size, flat, memory)
        b = Bench(fx, workdir, guest, probe, args.seed)
        plan = [(h, p, rw, c) for p, rw, c in scen for h in names]
        rows += await run_plan(b, name, with_repeats(plan, args.verify_repeats), batch)
        await loop.run_in_executor(None, shutil.rmtree, d)
    return rows, facts


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size_mib * MiB
    batch = args.batch_bytes or config.Settings().uffd_batch_bytes
    cold_ok = os.geteuid() == 0 and not args.no_cold
    rows: list[dict[str, Any]] = []
    probe = LagProbe()
    probe_task = asyncio.ensure_future(probe.run())
    workdir = Path(tempfile.mkdtemp(prefix="faultin-", dir=args.workdir))
    guest = await Guest.spawn(args.guest_cpu)
    loop = asyncio.get_running_loop()
    try:
        t0 = time.perf_counter()
        if not args.chains_only:
            fx = await loop.run_in_executor(None, build_fixture, workdir, size, args.seed)
            print(f"fixture: {size // MiB} MiB in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
            b = Bench(fx, workdir, guest, probe, args.seed)
            pats = ("sequential", "random", "ws10")
            hs = ["engine", "engine-verify", "engine-b1", "kernel", "minimal"]
            hs = VERIFY_PAIR if args.verify_only else hs
            plan = [(h, p, rw, "warm") for p in pats for rw in ("read", "write") for h in hs]
            if cold_ok:
                plan += [(h, p, "read", "cold") for p in ("sequential", "random") for h in hs]
            rows += await run_plan(b, LEGACY, with_repeats(plan, args.verify_repeats), batch)
            if not args.verify_only:
                rows += await prefetch_pair(b, batch)
        chain_rows, facts = await run_chains(args, workdir, guest, probe, batch, cold_ok)
        rows += chain_rows
    finally:
        await guest.close()
        probe.running = False
        await probe_task
        await loop.run_in_executor(None, shutil.rmtree, workdir)
    return {"size_bytes": size, "page_size": PAGE, "batch_bytes": batch, "cold": cold_ok,
            "verify_only": args.verify_only, "verify_repeats": args.verify_repeats,
            "cpus": os.cpu_count(), "loadavg": os.getloadavg(), "fixtures": facts,
            "rows": rows}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--batch-bytes", type=int, help="engine batch (default: uffd_batch_bytes)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/faultin"))
    ap.add_argument(
        "--workdir", type=Path, default=Path("/var/tmp"),
        help="where the snapshot files go (not tmpfs: cold runs drop its cache)",
    )  # fmt: skip
    ap.add_argument("--no-cold", action="store_true", help="skip the cold page cache runs")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--fixtures", default=",".join(CHAINS),
        type=lambda v: [f for f in v.split(",") if f],
        help=f"chain fixtures to run, comma-separated (default all: {','.join(CHAINS)}; '' none)",
    )  # fmt: skip
    ap.add_argument(
        "--chains-only", action="store_true",
        help="skip the two-generation fixture (and its goals): only the chain fixtures",
    )  # fmt: skip
    ap.add_argument(
        "--verify-only", action="store_true",
        help="run only the engine with and without verify_pages (the verify_pages_cost figure)",
    )  # fmt: skip
    ap.add_argument(
        "--verify-repeats", type=int, default=1, metavar="N",
        help="run each scenario's engine / engine-verify pair N times, alternating (medians)",
    )  # fmt: skip
    ap.add_argument(
        "--copy-modes", action="store_true",
        help="also run the chain fixtures with each install strategy forced",
    )  # fmt: skip
    ap.add_argument(
        "--pin",
        metavar="HANDLER,GUEST|none",
        default="0,1" if len(os.sched_getaffinity(0)) > 1 else "none",
        help="pin the handlers (this process and the threads it starts) and the guest to"
        " these CPUs (default 0,1: the guest's vCPU on its own core, as on a host). A"
        " wake-up that crosses CPUs costs ~40 us in a VM and ~7 us on the same CPU, so"
        " unpinned single-page latencies depend on where the scheduler puts each thread",
    )  # fmt: skip
    args = ap.parse_args()
    if args.pin != "none":
        handler_cpu, args.guest_cpu = (int(c) for c in args.pin.split(","))
        os.sched_setaffinity(0, {handler_cpu})  # inherited by the engine's threads
    else:
        args.guest_cpu = None
    uffd = features.userfaultfd()
    if not uffd.available:
        print(f"faultin: {uffd.reason}", file=sys.stderr)
        return 1
    import uvloop

    res = uvloop.run(run_all(args))
    res["ratios"] = ratios(res)
    args.out.mkdir(parents=True, exist_ok=True)
    pngs = [] if args.chains_only or args.verify_only else plots(res, args.out)
    for r in res["rows"]:
        r.pop("_lat", None)
        r.pop("working_set", None)
    (args.out / "faultin.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "faultin.md").write_text(markdown(res))
    print(markdown(res))
    print(json.dumps(res["ratios"], indent=2))
    print(f"wrote {args.out / 'faultin.json'}, {args.out / 'faultin.md'}, "
          + ", ".join(str(p) for p in pngs))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
