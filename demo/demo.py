#!/usr/bin/env python3
"""make demo: wrennd's main job on this machine, scripted with wrennctl, then cleaned up.

Builds (or reuses) the guest image, makes a scratch state dir, starts wrennd
with Firecracker if it can run guests here and fcsim otherwise (the daemon's
log says which and why), and runs: create, exec, write a file, pause,
resume, read it back, the fault statistics, a template and three clones,
destroy.  The
sandboxes' network lives in a namespace playing the host (a test bed), so
the machine's own links, routes and nftables are never touched.  Then a
template from the sandbox and three clones of it, created in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from wrennd_sim.fcsim.control import ControlClient
from wrennd_sim.network_testbed import TestBed

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def say(text: str) -> None:
    print(f"\n\033[1m# {text}\033[0m", flush=True)


def wrennctl(sock: Path, *args: str, stdin: bytes | None = None) -> str:
    cmd = [str(BIN / "wrennctl"), "--socket", str(sock), *args]
    print("$ wrennctl " + shlex.join(args), flush=True)
    done = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    out = done.stdout.decode(errors="replace")
    # Progress (stderr) belongs before the result it led to.
    sys.stderr.write(done.stderr.decode(errors="replace"))
    sys.stderr.flush()
    sys.stdout.write(out)
    sys.stdout.flush()
    if done.returncode not in (0,):
        raise SystemExit(f"wrennctl {args[0]} {args[1]} failed with {done.returncode}")
    return out


@contextlib.contextmanager
def daemon(state: Path, run: Path, bed: TestBed, tag: str) -> Iterator[Path]:
    env = {
        **os.environ,
        "WRENND_STATE_DIR": str(state),
        "WRENND_RUN_DIR": str(run),
        "WRENND_SOCKET_GROUP": "root",
        "WRENND_NETWORK_PREFIX": f"d{tag}s",
        "WRENND_NFT_TABLE": f"demo_{tag}",
        "WRENND_HOST_NETNS": str(bed.host_path),
        "WRENND_STORAGE_BACKEND": "copy",
    }
    if not (state / "kernels" / "vmlinux").exists() and "WRENND_KERNEL" not in os.environ:
        # fcsim needs a kernel file but never runs it; a real Firecracker needs `make kernel`.
        (state / "kernels").mkdir(parents=True)
        (state / "kernels" / "vmlinux").write_bytes(b"placeholder kernel for fcsim")
    log = run / "wrennd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "wrennd")], env=env, stderr=out, stdout=out)
    sock = run / "wrennd.sock"
    try:
        for _ in range(300):
            if sock.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        if proc.poll() is not None:
            raise SystemExit(f"wrennd did not start:\n{log.read_text()}")
        vmm = [line for line in log.read_text().splitlines() if "vmm chosen" in line]
        print("\n".join(vmm) or "(vmm choice not logged)")
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)


def session(sock: Path) -> None:
    say("create a sandbox from the base image (64 MiB, 1 vCPU)")
    sid = json.loads(wrennctl(sock, "--json", "sandbox", "create", "base", "--memory-mib", "64"))[
        "id"
    ]
    say("run a command inside it")
    wrennctl(
        sock, "sandbox", "exec", sid, "--", "sh", "-c", "uname -n; cat /etc/os-release | head -1"
    )
    say("write a file")
    wrennctl(sock, "sandbox", "write", sid, "/root/hello.txt", stdin=b"hello from the demo\n")
    say("pause: the guest is frozen, snapshotted, and every host resource is freed")
    wrennctl(sock, "sandbox", "pause", sid)
    wrennctl(sock, "sandbox", "list")
    say("resume: memory is served lazily by the UFFD engine")
    wrennctl(sock, "sandbox", "resume", sid)
    say("read the file back")
    wrennctl(sock, "sandbox", "read", sid, "/root/hello.txt")
    say("pause and resume again: a Diff snapshot, and a prefetch map from the last resume")
    wrennctl(sock, "sandbox", "pause", sid)
    wrennctl(sock, "sandbox", "resume", sid)
    info = json.loads(wrennctl(sock, "--json", "sandbox", "get", sid))
    control = info.get("vmm", {}).get("control_socket")
    if control:
        say("fcsim guests do not use guest memory: touch 4096 pages via its control socket")
        touched = asyncio.run(_touch(Path(control)))
        print(json.dumps(touched))
    say("what the sandbox costs the host, and the fault statistics")
    wrennctl(sock, "sandbox", "get", sid)
    wrennctl(sock, "host", "stats")
    say("a template from the running sandbox, then three clones of it at once")
    wrennctl(sock, "template", "create", "demo", sid)
    clones = _three_clones(sock)
    for clone in clones:
        wrennctl(sock, "sandbox", "read", clone, "/root/hello.txt")
    wrennctl(sock, "sandbox", "list")
    wrennctl(sock, "template", "list")
    say("destroy them all and the template")
    for each in [*clones, sid]:
        wrennctl(sock, "sandbox", "destroy", each)
    wrennctl(sock, "template", "delete", "demo")


def _three_clones(sock: Path) -> list[str]:
    cmd = [str(BIN / "wrennctl"), "--socket", str(sock), "--json", "sandbox", "clone", "demo"]
    print("$ wrennctl sandbox clone demo   # three times, in parallel", flush=True)
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE) for _ in range(3)]
    ids = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"wrennctl sandbox clone failed with {proc.returncode}")
        ids.append(json.loads(out)["id"])
    print("\n".join(ids))
    return ids


async def _touch(control: Path) -> dict[str, object]:
    client = ControlClient(control)
    try:
        return await client.call("touch", count=4096, order="random", arg=1)
    finally:
        await client.close()


@contextlib.contextmanager
def scratch_host(kind: str, letter: str) -> Iterator[tuple[Path, Path]]:
    """The guest image, a scratch state dir and run dir, a test-bed network, and a wrennd
    on them; yields (socket, run dir) and removes everything it made on the way out."""
    say("guest image (built once, cached under /var/cache/wrennd/images)")
    built = subprocess.run(
        [str(REPO / "images" / "build-image"), "-"], check=True, stdout=subprocess.PIPE, text=True
    )
    image = Path(built.stdout.strip().splitlines()[-1])
    tag = secrets.token_hex(2)
    bed = TestBed(f"{letter}{tag}")
    state = Path(tempfile.mkdtemp(prefix=f"wrennd-{kind}-", dir="/var/tmp"))
    run = Path(tempfile.mkdtemp(prefix=f"w{letter}", dir="/tmp"))
    try:
        (state / "images").mkdir()
        subprocess.run(["cp", "--sparse=always", image, state / "images" / "base.ext4"], check=True)
        bed.build()
        with daemon(state, run, bed, tag) as sock:
            yield sock, run
    finally:
        bed.destroy()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)
    say(f"done; everything make {kind} made is gone")


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (namespaces, loop devices, userfaultfd)", file=sys.stderr)
        return 2
    with scratch_host("demo", "d") as (sock, _):
        session(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
