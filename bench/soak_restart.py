#!/usr/bin/env python3
"""Soak: kill -9 the daemon at random moments over a busy host; count what survives.

Runs as root against a test bed (wrennd_sim.network_testbed), a btrfs state dir
in a loop file and fcsim, with a real wrennd process.  A driver keeps the host
busy (exec, file writes, pause, resume, create, destroy on random sandboxes,
each running a guest counter) while the daemon is killed ``--kills`` times at
random moments and started again.  After each restart every sandbox the
client knew of is classified:

- kept: it was running and runs on, adopted (same VMM pid), or was paused and
  still is;
- rolled back: it went back to its last snapshot with its disk
  (``recovered_from``; a resumed sandbox served by the dead daemon's engine);
- lost: gone, or in error (a create the kill interrupted, which never answered,
  is removed by recovery: counted apart as ``creates_undone``).

Not part of CI (minutes long).  Prints one JSON line per kill and a summary:

    .venv/bin/python -m bench.soak_restart [--kills 20] [--sandboxes 5] [--json out.json]

The daemon runs under a service manager's fd store (wrennd_sim.fdstore, as
systemd would run it), so a sandbox whose engine still serves it is handed
over; ``--no-fd-store`` runs it without (such a sandbox is rolled back).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.scratch import REPO, btrfs_dir, sh
from wrennd.rpc.client import Client, ClientError
from wrennd_sim.fdstore import FdStore
from wrennd_sim.network_testbed import TestBed

COUNTER = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done"


class Daemon:
    def __init__(
        self, state: Path, run: Path, bed: TestBed, tag: str, store: FdStore | None
    ) -> None:
        self.store = store
        self.env = {
            **os.environ,
            "WRENND_STATE_DIR": str(state),
            "WRENND_RUN_DIR": str(run),
            "WRENND_SOCKET_GROUP": "wrennd-soak-no-such-group",
            "WRENND_FIRECRACKER_BIN": "/nonexistent/firecracker",
            "WRENND_KERNEL": str(state / "vmlinux"),
            "WRENND_STORAGE_BACKEND": "reflink",
            "WRENND_NETWORK_PREFIX": f"sk{tag}s",
            "WRENND_NFT_TABLE": f"sk_{tag}",
            "WRENND_HOST_NETNS": str(bed.host_path),
        }
        self.env.pop("NOTIFY_SOCKET", None)
        self.socket = run / "wrennd.sock"
        self.log = run / "wrennd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv, env, fds = [sys.executable, "-m", "wrennd.daemon"], dict(self.env), ()
        if self.store is not None:  # as systemd runs it: NOTIFY_SOCKET and the kept fds
            argv, extra, fds = self.store.launch_argv(argv)
            env.update(extra)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out, pass_fds=fds)

    def kill(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(120)
        self.proc = None

    async def client(self) -> Client:
        return await Client.connect_when_up(self.socket, 120)


async def drive(c: Client, rng: random.Random, known: set[str]) -> None:
    """Random work until cancelled or the daemon goes away."""
    while True:
        if not known or rng.random() < 0.05:
            sid = (await c.call("sandbox.create", {"image": "base", "memory_mib": 64}))["id"]
            known.add(sid)
            await c.call("sandbox.process.start", {"id": sid, "shell": COUNTER})
            continue
        sid = rng.choice(sorted(known))
        op = rng.choices(["exec", "write", "pause", "resume", "destroy"], [5, 4, 2, 2, 0.3])[0]
        try:
            if op == "exec":
                await c.call("sandbox.exec", {"id": sid, "shell": "echo x", "timeout": 20})
            elif op == "write":
                params = {"id": sid, "path": "/root/w", "data": "eA==", "timeout": 20}
                await c.call("sandbox.files.write", params)
            elif op == "destroy":
                await c.call("sandbox.destroy", {"id": sid})
                known.discard(sid)
            else:
                await c.call(f"sandbox.{op}", {"id": sid})
        except ClientError as e:
            if "closed the connection" in str(e) or "failed" in str(e):
                raise
            # wrong_state and friends: the state moved under the random choice


async def one_round(d: Daemon, rng: random.Random, known: set[str]) -> dict[str, Any]:
    c = await d.client()
    before = {s["id"]: s for s in (await c.call("sandbox.list"))["sandboxes"]}
    known &= set(before)
    work = asyncio.ensure_future(drive(c, rng, known))
    await asyncio.sleep(rng.uniform(0.5, 4.0))
    listed = await asyncio.wait_for(c.call("sandbox.list"), 30)
    at_kill = {s["id"]: s for s in listed["sandboxes"]}
    pids = {}
    for sid, s in at_kill.items():
        if s["state"] == "running":
            with contextlib.suppress(ClientError):
                pids[sid] = (await c.call("sandbox.get", {"id": sid})).get("vmm", {}).get("pid")
    d.kill(signal.SIGKILL)
    with contextlib.suppress(Exception):
        await work
    with contextlib.suppress(Exception):
        await c.close()
    d.start()
    c = await d.client()
    after = {s["id"]: s for s in (await c.call("sandbox.list"))["sandboxes"]}
    # A create the kill interrupted never answered: recovery removes it (not a loss).
    undone = [i for i, s in at_kill.items() if s["state"] == "creating" and i not in after]
    counts: dict[str, Any] = {
        "kept": 0,
        "rolled_back": 0,
        "lost": 0,
        "total": len(at_kill) - len(undone),
    }
    counts["creates_undone"] = len(undone)
    for sid, s in at_kill.items():
        now = after.get(sid)
        if sid in undone:
            continue
        if now is None or now["state"] == "error":
            counts["lost"] += 1
            why = "gone" if now is None else str(now["error"])[:160]
            counts.setdefault("lost_why", []).append(f"{sid} (was {s['state']}): {why}")
        elif now.get("recovered_from"):
            counts["rolled_back"] += 1
        elif s["state"] == "running" and now["state"] == "running":
            got = await c.call("sandbox.get", {"id": sid})
            same = got.get("vmm", {}).get("pid") == pids.get(sid)
            counts["kept" if same else "lost"] += 1
        else:
            counts["kept"] += 1  # paused stays paused; in-flight calls land at rest
    known.clear()
    known.update(after)
    await c.close()
    return counts


async def run(args: argparse.Namespace) -> dict[str, Any]:
    image = sh(REPO / "images" / "build-image", "-").strip().splitlines()[-1]
    tag = secrets.token_hex(2)
    bed = TestBed(f"sk{tag}")
    rng = random.Random(args.seed)
    rounds = []
    with btrfs_dir(8) as mnt, tempfile.TemporaryDirectory(prefix="wsk", dir="/tmp") as run_dir:
        (mnt / "images").mkdir()
        sh("cp", "--sparse=always", image, mnt / "images" / "base.ext4")
        (mnt / "vmlinux").write_bytes(b"fcsim does not run the kernel")
        store = FdStore(Path(run_dir) / "notify.sock") if args.fd_store else None
        d = Daemon(mnt, Path(run_dir), bed, tag, store)
        try:
            bed.build()
            d.start()
            c = await d.client()
            known: set[str] = set()
            for _ in range(args.sandboxes):
                sid = (await c.call("sandbox.create", {"image": "base", "memory_mib": 64}))["id"]
                await c.call("sandbox.process.start", {"id": sid, "shell": COUNTER})
                known.add(sid)
            await c.close()
            for i in range(args.kills):
                counts = await one_round(d, rng, known)
                rounds.append(counts)
                print(json.dumps({"kill": i + 1, **counts}), flush=True)
            c = await d.client()
            for s in (await c.call("sandbox.list"))["sandboxes"]:
                with contextlib.suppress(ClientError):
                    await c.call("sandbox.destroy", {"id": s["id"]})
            await c.close()
            d.kill(signal.SIGTERM)
        finally:
            if d.proc is not None:
                d.kill(signal.SIGKILL)
            if store is not None:
                store.close()
            bed.destroy()
    total = {k: sum(r[k] for r in rounds) for k in ("kept", "rolled_back", "lost", "total")}
    return {"rounds": rounds, "summary": total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--sandboxes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--fd-store",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the daemon under a service manager's fd store (the hand-over)",
    )
    args = parser.parse_args()
    result = asyncio.run(run(args))
    s = result["summary"]
    print(
        f"kept {s['kept']}/{s['total']}, rolled back to their snapshot {s['rolled_back']}, "
        f"lost {s['lost']}"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if s["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
