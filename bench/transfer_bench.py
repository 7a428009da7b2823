#!/usr/bin/env python3
"""File transfer throughput through the daemon against the guest agent directly, side by side.

Runs as root: a real wrennd process (fcsim VMs) on a test bed network and a
btrfs state dir, one sandbox.  For each repetition, alternating, the same
random file is uploaded into the guest's /tmp and downloaded back

- through the daemon: the SDK (``wrennd.sdk``) over the Unix socket, chunked
  JSON-RPC calls (base64), the daemon streaming to the agent;
- directly: ``GuestClient`` against the agent's HTTP API (raw bodies), run in
  the test bed's host network namespace where the sandbox's address routes;

and prints the median MiB/s of each and the daemon's share of the direct speed.

    .venv/bin/python bench/transfer_bench.py [--size-mib 256] [--reps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

from lifecycle import btrfs_dir, sh  # noqa: E402

from wrennd.sdk import AsyncSandbox  # noqa: E402
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


async def through_daemon(socket: Path, sid: str, local: Path, out: Path) -> tuple[float, float]:
    sb = await AsyncSandbox.connect(sid, socket=socket)
    try:
        start = time.perf_counter()
        await sb.files.upload(local, "/tmp/daemon.bin")
        up = time.perf_counter() - start
        start = time.perf_counter()
        await sb.files.download("/tmp/daemon.bin", out)
        return up, time.perf_counter() - start
    finally:
        await sb.close()


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


async def measure(
    socket: Path, bed: TestBed, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    size = args.size_mib * MIB
    local = tmp / "payload.bin"
    with local.open("wb") as f:
        for _ in range(args.size_mib):
            f.write(os.urandom(MIB))
    async with await AsyncSandbox.create("base", socket=socket, memory_mib=128) as sb:
        url = f"http://{sb.info.raw['host_address']}:49983"
        d_up, d_down, g_up, g_down = [], [], [], []
        for _ in range(args.reps):  # alternating: the two paths see the same machine state
            up, down = await through_daemon(socket, sb.id, local, tmp / "back.bin")
            d_up.append(up)
            d_down.append(down)
            cmd = ["ip", "netns", "exec", bed.host, sys.executable, __file__]
            cmd += ["--direct", url, "--file", str(local)]
            child = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE)
            stdout, _ = await child.communicate()
            if child.returncode != 0:
                raise RuntimeError(f"the direct half failed with {child.returncode}")
            got = json.loads(stdout)
            g_up += got["upload_s"]
            g_down += got["download_s"]
    result = {
        "size_mib": args.size_mib,
        "reps": args.reps,
        "daemon_upload_mib_s": round(mib_s(size, d_up), 1),
        "direct_upload_mib_s": round(mib_s(size, g_up), 1),
        "daemon_download_mib_s": round(mib_s(size, d_down), 1),
        "direct_download_mib_s": round(mib_s(size, g_down), 1),
    }
    result["upload_ratio"] = round(result["daemon_upload_mib_s"] / result["direct_upload_mib_s"], 3)
    result["download_ratio"] = round(
        result["daemon_download_mib_s"] / result["direct_download_mib_s"], 3
    )
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
