"""``python -m wrennd.uffd``: serve one Firecracker's memory from a snapshot.

    serve --socket PATH --snapshot DIR [--store S] [--batch-bytes N]
          [--no-prefetch] [--stats-json FILE] [--page-size N]

Creates the listening socket (give it to Firecracker as the Uffd backend's
``backend_path``), serves one VMM (or anything speaking its protocol) from a
snapshot made by ``python -m wrennd.snapshot``, and exits 0 when the peer
closes.  --stats-json receives the engine's stats, why serving ended, and
the working-set record (ranges in first-touch order: the next prefetch map).
--store defaults to state_dir/memfiles from the wrennd configuration;
--page-size defaults to the one the VMM announces.  SIGINT/SIGTERM stop
serving cleanly.  Errors go to stderr with exit status 1 (2 for usage).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop

from wrennd import config, log
from wrennd.durable import atomic_write
from wrennd.snapshot import SnapshotError, open_snapshot
from wrennd.uffd.engine import EngineConfigError
from wrennd.uffd.handshake import HandshakeError
from wrennd.uffd.server import ServeResult, ServeStopped, SnapshotMemory, UffdServer


def _positive(text: str) -> int:
    value = int(text, 0)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m wrennd.uffd",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve one VMM's guest memory from a snapshot")
    s.add_argument("--socket", type=Path, required=True, help="listening socket to create")
    s.add_argument("--snapshot", type=Path, required=True, help="snapshot directory")
    s.add_argument("--store", type=Path, help="generation store (default: state_dir/memfiles)")
    s.add_argument(
        "--batch-bytes",
        type=_positive,
        help="largest run installed per fault (default: the uffd_batch_bytes setting)",
    )
    s.add_argument("--no-prefetch", action="store_true", help="ignore the snapshot's prefetch map")
    s.add_argument("--stats-json", type=Path, help="write stats and the working set here at exit")
    s.add_argument("--page-size", type=_positive, help="expected page size in bytes")
    s.add_argument(
        "--handshake-timeout", type=float, default=60.0, help="seconds to wait for the handshake"
    )
    return p


def _report(args: argparse.Namespace, server: UffdServer, result: ServeResult) -> dict[str, Any]:
    return {
        "socket": str(args.socket),
        "snapshot": str(args.snapshot),
        "reason": result.reason,
        "stop_error": result.stop_error,
        "peer_pid": server.peer_pid,
        "regions": [dataclasses.asdict(r) for r in server.regions],
        "stats": result.stats.as_dict(),
        "latency_p50_ns": result.stats.latency_percentile_ns(0.5),
        "latency_p99_ns": result.stats.latency_percentile_ns(0.99),
        "working_set": [list(r) for r in result.working_set],
    }


async def serve(args: argparse.Namespace, settings: config.Settings) -> int:
    store = args.store if args.store is not None else settings.memfiles_dir
    loop = asyncio.get_running_loop()
    snap = await loop.run_in_executor(None, open_snapshot, args.snapshot, store)
    memory = SnapshotMemory(
        memory_size=snap.memory_size,
        page_size=args.page_size,
        entries=snap.entries,
        entry_count=snap.entry_count,
        generations=snap.generation_paths,
        prefetch=snap.prefetch,
    )
    server = UffdServer(
        args.socket,
        memory,
        batch_bytes=args.batch_bytes or settings.uffd_batch_bytes,
        prefetch=not args.no_prefetch,
        handshake_timeout=args.handshake_timeout,
    )
    # Handlers first: a supervisor may signal as soon as the socket exists.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.stop)
    await server.start()
    try:
        result = await server.serve()
    except ServeStopped as e:
        print(f"{args.socket}: {e}", file=sys.stderr)
        return 0
    finally:
        await server.close()
    if args.stats_json is not None:
        data = json.dumps(_report(args, server, result), indent=2).encode() + b"\n"
        await loop.run_in_executor(None, atomic_write, args.stats_json, data)
    # ESRCH: the VMM exited while a fault was being served, as good as EOF
    if result.stats.stop_error not in (0, -errno.ESRCH):
        print(f"error: the engine stopped: {result.stop_error}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = config.load()
        log.setup(settings.log_level)
        return uvloop.run(serve(args, settings))
    except (SnapshotError, HandshakeError, EngineConfigError, OSError, config.ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
