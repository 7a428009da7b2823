#!/usr/bin/env python3
"""File transfer throughput through the daemon against the guest agent directly, side by side.

Runs as root: a real wrennd process (fcsim VMs) on a test bed network and a
btrfs state dir, one sandbox.  For each repetition the same random file is
uploaded into the guest's /tmp and downloaded back three ways, in a rotating
order so that no way always runs first or last:

- ``raw``: the SDK's default path, the file's bytes raw over a second
  connection to the Unix socket (``sandbox.files.stream``), the daemon
  streaming them to the agent;
- ``json``: the SDK's compatibility path, chunked JSON-RPC calls (base64)
  and ``chunk`` notifications on the one connection;
- ``direct``: ``GuestClient`` against the agent's HTTP API (raw bodies), run in
  the test bed's host network namespace where the sandbox's address routes.

Page cache: warm for all three; the local file is written just before the
runs, and each download reads the guest file its own upload has just written.
No way writes the downloaded bytes to a host file (the SDK's ``download``
would also fsync them): the daemon paths hash them and check size and sha256
against the daemon's answer and the local file, the direct half only counts
them.  Uploads read the local file in 1 MiB blocks every way; the SDK also
hashes them.
Prints the median MiB/s of each way and each daemon path's share of the
direct speed.

    .venv/bin/python bench/transfer_bench.py [--size-mib 256] [--reps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from scratch import btrfs_dir, sh  # noqa: E402

from wrennd.rpc.client import Client  # noqa: E402
from wrennd.sdk import AsyncSandbox, transfer  # noqa: E402
from wrennd_sim.fcsim.harness import require_fcsim  # noqa: E402
from wrennd_sim.network_testbed import TestBed  # noqa: E402

MIB = 1 << 20


async def direct(url: str, local: Path, reps: int) -> dict[str, list[float]]:
    """Upload and download through GuestClient (runs inside the test bed's namespace)."""
    from wrennd.guest.client import GuestClient

    async def chunks() -> AsyncIterator[bytes]:
        with local.open("rb") as f:
            while block := f.read(MIB):
                yield block

    up, down = [], []
    async with GuestClient(url) as guest:
        for _ in range(reps):
            start = time.perf_counter()
            await guest.write_file("/tmp/direct.bin", chunks())
            up.append(time.perf_counter() - start)
            start = time.perf_counter()
            size = 0
            async for block in guest.read_file("/tmp/direct.bin"):
                size += len(block)
            down.append(time.perf_counter() - start)
    return {"upload_s": up, "download_s": down}


async def through_daemon(
    socket: Path, sid: str, local: Path, digest: str, raw: bool
) -> tuple[float, float]:
    client = await Client.connect(socket)
    remote = "/tmp/raw.bin" if raw else "/tmp/json.bin"
    try:
        start = time.perf_counter()
        sent = await transfer.upload(client, sid, remote, transfer.file_chunks(local), raw=raw)
        up = time.perf_counter() - start
        start = time.perf_counter()
        # Checked (size and sha256 on both sides) but not written: like the direct half.
        got = await transfer.download_to(client, sid, remote, lambda _: None, raw=raw)
        down = time.perf_counter() - start
    finally:
        await client.close()
    if sent["sha256"] != digest or got["sha256"] != digest:
        raise RuntimeError(f"sha256 mismatch: sent {sent['sha256']}, got {got['sha256']}")
    return up, down


async def direct_once(bed: TestBed, url: str, local: Path) -> tuple[float, float]:
    cmd = ["ip", "netns", "exec", bed.host, sys.executable, __file__]
    cmd += ["--direct", url, "--file", str(local)]
    child = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE)
    stdout, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"the direct half failed with {child.returncode}")
    got = json.loads(stdout)
    return got["upload_s"][0], got["download_s"][0]


@contextlib.contextmanager
def daemon(state: Path, run: Path, bed: TestBed, tag: str) -> Iterator[Path]:
    env = {
        **os.environ,
        "WRENND_STATE_DIR": str(state),
        "WRENND_RUN_DIR": str(run),
        "WRENND_SOCKET_GROUP": "root",
        "WRENND_FIRECRACKER_BIN": "/nonexistent/firecracker",
        "WRENND_KERNEL": str(state / "vmlinux"),
        "WRENND_STORAGE_BACKEND": "reflink",
        "WRENND_NETWORK_PREFIX": f"tb{tag}s",
        "WRENND_NFT_TABLE": f"tb_{tag}",
        "WRENND_HOST_NETNS": str(bed.host_path),
    }
    env.pop("NOTIFY_SOCKET", None)
    with (run / "wrennd.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "wrennd.daemon"], env=env, stderr=log)
    socket = run / "wrennd.sock"
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((run / "wrennd.log").read_text())
            time.sleep(0.1)
        yield socket
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def mib_s(size: int, seconds: list[float]) -> float:
    return size / MIB / statistics.median(seconds)


WAYS = ("raw", "json", "direct")


async def measure(
    socket: Path, bed: TestBed, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    size = args.size_mib * MIB
    local = tmp / "payload.bin"
    sha = hashlib.sha256()
    with local.open("wb") as f:
        for _ in range(args.size_mib):
            block = os.urandom(MIB)
            sha.update(block)
            f.write(block)
    times: dict[str, dict[str, list[float]]] = {w: {"up": [], "down": []} for w in WAYS}
    async with await AsyncSandbox.create("base", socket=socket, memory_mib=128) as sb:
        url = f"http://{sb.info.raw['host_address']}:49983"
        for rep in range(args.reps):
            order = WAYS[rep % 3 :] + WAYS[: rep % 3]  # rotating: the same machine state
            for way in order:
                if way == "direct":
                    up, down = await direct_once(bed, url, local)
                else:
                    digest = sha.hexdigest()
                    up, down = await through_daemon(socket, sb.id, local, digest, way == "raw")
                times[way]["up"].append(up)
                times[way]["down"].append(down)
    result: dict[str, Any] = {
        "size_mib": args.size_mib,
        "reps": args.reps,
        "page_cache": "warm (local file just written; each download reads its own upload)",
        "loadavg_1m": os.getloadavg()[0],
    }
    for way in WAYS:
        for leg, name in (("up", "upload"), ("down", "download")):
            result[f"{way}_{name}_mib_s"] = round(mib_s(size, times[way][leg]), 1)
            result[f"{way}_{name}_s"] = [round(t, 3) for t in times[way][leg]]
    for way in ("raw", "json"):
        for name in ("upload", "download"):
            ratio = result[f"{way}_{name}_mib_s"] / result[f"direct_{name}_mib_s"]
            result[f"{way}_{name}_ratio"] = round(ratio, 3)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    image = sh(REPO / "images" / "build-image", "-").strip().splitlines()[-1]
    require_fcsim()
    tag = secrets.token_hex(2)
    bed = TestBed(f"tb{tag}")
    with (
        btrfs_dir(8) as mnt,
        tempfile.TemporaryDirectory(prefix="wtr", dir="/tmp") as run_dir,
        tempfile.TemporaryDirectory(prefix="wtp") as tmp,
    ):
        (mnt / "images").mkdir()
        sh("cp", "--sparse=always", image, mnt / "images" / "base.ext4")
        (mnt / "vmlinux").write_bytes(b"fcsim does not run the kernel")
        try:
            bed.build()
            with daemon(mnt, Path(run_dir), bed, tag) as socket:
                return asyncio.run(measure(socket, bed, args, Path(tmp)))
        finally:
            bed.destroy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--direct", help=argparse.SUPPRESS)  # the in-namespace half
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.direct:
        print(json.dumps(asyncio.run(direct(args.direct, args.file, 1))))
        return 0
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
