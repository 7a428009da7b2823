#!/usr/bin/env python3
"""JSON-RPC throughput of wrennd for host.info, and its event-loop lag under that load.

A real wrennd process serves host.info to closed-loop clients (one request
outstanding per connection) over 1 and over 50 connections.  The floor, run
the same way in the same run, is a bare uvloop line server that answers every
line with the same bytes wrennd would send: the cost of the socket and the
loop without JSON parsing, dispatch, validation and the handler.  The daemon's
own lag monitor (host.stats, lag over the load window) gives the event-loop
lag percentiles under load.

    .venv/bin/python bench/rpc_bench.py [--seconds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

REQUEST = b'{"jsonrpc":"2.0","method":"host.info","id":1}\n'

FLOOR_SERVER = """
import asyncio, sys, uvloop
answer = open(sys.argv[2], "rb").read()
class Echo(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, data):
        self.buf += data
        n = self.buf.count(b"\\n")
        if n:
            self.buf = self.buf[self.buf.rfind(b"\\n") + 1:]
            self.t.write(answer * n)
async def main():
    server = await asyncio.get_running_loop().create_unix_server(Echo, sys.argv[1], backlog=4096)
    print("ready", flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""


class Closed(asyncio.Protocol):
    """One connection: send a request, wait for its answer line, send the next."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self.count = 0
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(REQUEST)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        lines = self.buf.count(b"\n")
        if not lines:
            return
        self.buf = self.buf[self.buf.rfind(b"\n") + 1 :]
        self.count += lines
        if not self.stop.is_set():
            self.transport.write(REQUEST)  # type: ignore[attr-defined]


async def load(path: str, connections: int, seconds: float) -> float:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    protocols = []
    for _ in range(connections):
        _, proto = await loop.create_unix_connection(lambda: Closed(stop), path)
        protocols.append(proto)
    await asyncio.sleep(0.5)  # warm up
    start_count = sum(p.count for p in protocols)
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    done = sum(p.count for p in protocols) - start_count
    elapsed = time.perf_counter() - t0
    stop.set()
    await asyncio.sleep(0.1)
    for p in protocols:
        p.transport.close()
    return done / elapsed


async def call(path: str, method: str, params: dict[str, Any] | None = None) -> Any:
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 24)
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": 1}
    if params:
        message["params"] = params
    writer.write(json.dumps(message).encode() + b"\n")
    answer = json.loads(await reader.readline())
    writer.close()
    return answer["result"]


def wait_for_socket(path: str, proc: subprocess.Popen[bytes], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not Path(path).exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server at {path} did not start")
        time.sleep(0.05)


async def measure(sock: str, floor_sock: str, seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for conns in (1, 50):
        wrennd_rps = await load(sock, conns, seconds)
        stats = await call(sock, "host.stats", {"lag_window_s": seconds})
        floor_rps = await load(floor_sock, conns, seconds)
        results[f"{conns}_connections"] = {
            "wrennd_requests_per_s": round(wrennd_rps),
            "floor_requests_per_s": round(floor_rps),
            "wrennd_to_floor_ratio": round(wrennd_rps / floor_rps, 3),
            "event_loop_lag_ms": stats["event_loop"],
        }
    return results


async def host_info_answer(sock: str) -> bytes:
    result = await call(sock, "host.info")
    answer = {"jsonrpc": "2.0", "result": result, "id": 1}
    return json.dumps(answer, separators=(",", ":")).encode() + b"\n"


def run(seconds: float, tmp: Path) -> dict[str, Any]:
    env = {**os.environ, "WRENND_RUN_DIR": str(tmp / "run"), "WRENND_STATE_DIR": str(tmp / "s")}
    env["WRENND_LOG_LEVEL"] = "warning"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "wrennd.daemon"], env=env))
        sock = str(tmp / "run" / "wrennd.sock")
        wait_for_socket(sock, procs[0])
        answer = uvloop.run(host_info_answer(sock))
        (tmp / "answer").write_bytes(answer)
        floor_sock = str(tmp / "floor.sock")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", FLOOR_SERVER, floor_sock, str(tmp / "answer")],
                stdout=subprocess.DEVNULL,
            )
        )
        wait_for_socket(floor_sock, procs[1])
        results: dict[str, Any] = uvloop.run(measure(sock, floor_sock, seconds))
        results["answer_bytes"] = len(answer)
        return results
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="load per phase")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rpc-bench-") as tmp:
        results = run(args.seconds, Path(tmp))
    out = {
        "benchmark": "rpc_host_info",
        "seconds_per_phase": args.seconds,
        "cpus": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
        **results,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
