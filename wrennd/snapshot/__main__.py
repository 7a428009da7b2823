"""``python -m wrennd.snapshot``: the offline snapshot tool.

    ingest-full --memfile F --snapshot DIR [--store S] [--block-size N]
    ingest-diff --memfile F --parent DIR --snapshot NEWDIR [--store S]
    export      --snapshot DIR --out FILE [--store S]
    collapse    --snapshot DIR [--store S]
    inspect     --snapshot DIR [--json]
    verify      --snapshot DIR [--store S]

--store defaults to state_dir/memfiles from the wrennd configuration.
Errors go to stderr with exit status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wrennd import config
from wrennd.snapshot.chain import collapse, export, inspect, verify
from wrennd.snapshot.errors import SnapshotError
from wrennd.snapshot.ingest import DEFAULT_BLOCK_SIZE, ingest_diff, ingest_full


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m wrennd.snapshot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, summary: str, store: bool = True) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=summary)
        c.add_argument("--snapshot", type=Path, required=True, help="snapshot directory")
        if store:
            c.add_argument(
                "--store", type=Path, help="generation store (default: state_dir/memfiles)"
            )
        return c

    c = command("ingest-full", "a Firecracker Full memfile becomes a snapshot (generation 0)")
    c.add_argument("--memfile", type=Path, required=True)
    c.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE)
    c = command("ingest-diff", "a Firecracker Diff memfile on top of --parent becomes a snapshot")
    c.add_argument("--memfile", type=Path, required=True)
    c.add_argument("--parent", type=Path, required=True)
    c = command("export", "write the flat memory image")
    c.add_argument("--out", type=Path, required=True)
    command("collapse", "merge the chain into one generation")
    c = command("inspect", "generations, entries, bytes per generation", store=False)
    c.add_argument("--json", action="store_true")
    command("verify", "header and every generation file readable and consistent")
    return p


def _store(args: argparse.Namespace) -> Path:
    if args.store is not None:
        return Path(args.store)
    return config.load().memfiles_dir


def _print_inspect(info: dict[str, Any]) -> None:
    print(f"snapshot   {info['snapshot']}")
    print(f"memory     {info['memory_size']} bytes, block size {info['block_size']}")
    print(
        f"generation {info['generation']} (build {info['build_id']}, base {info['base_build_id']})"
    )
    print(f"entries    {info['entries']}, zero-fill {info['zero_bytes']} bytes")
    for g in info["generations"]:
        allocated = g["allocated_bytes"]
        on_disk = "missing" if allocated is None else f"{allocated} allocated"
        print(f"  [{g['index']}] {g['build_id']}  {g['mapped_bytes']} bytes mapped, {on_disk}")


def run(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    snap: Path = args.snapshot
    if args.command == "ingest-full":
        h = ingest_full(args.memfile, snap, _store(args), args.block_size)
        print(f"{snap}: generation {h.generation}, {len(h.mapping)} entries")
    elif args.command == "ingest-diff":
        h = ingest_diff(args.memfile, args.parent, snap, _store(args))
        print(f"{snap}: generation {h.generation}, {len(h.mapping)} entries")
    elif args.command == "export":
        export(snap, args.out, _store(args))
    elif args.command == "collapse":
        h = collapse(snap, _store(args))
        print(f"{snap}: collapsed into {h.build_id}")
    elif args.command == "inspect":
        info = inspect(snap)
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            _print_inspect(info)
    elif args.command == "verify":
        problems = verify(snap, _store(args))
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            return 1
        print(f"{snap}: ok")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except (SnapshotError, OSError, config.ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
