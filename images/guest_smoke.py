#!/usr/bin/env python3
"""make guest-smoke: the guest image on a real kernel, under QEMU's microvm machine.

    .venv/bin/python images/guest_smoke.py [--kernel build/vmlinux] [--image build/base.ext4]

Boots a copy of the image with the guest kernel (its initrd and metadata from
<kernel>.json, as images/fetch-kernel leaves them) under ``qemu-system-x86_64
-M microvm`` with TCG, so no KVM is needed.  Like Firecracker, microvm has
virtio-mmio devices only, described to the guest through ACPI: one block device
(the root drive) and one net device on a TAP.  That TAP is tap0 of a sandbox
network namespace built by wrennd's own NetworkManager on a stand-in host (the
test bed), and the kernel command line is the one wrennd gives Firecracker, plus
the ``root=/dev/vda rw`` Firecracker appends for a writable root drive.

Then, through the guest agent at the sandbox's host-reachable address: /health;
``uname -r`` (the guest kernel's release, not the host's); a file written and read
back; FIFREEZE of the real root, where a write blocks until FITHAW and then lands;
the wall clock stepped and stepped back; a clean shutdown (init's SIGTERM path:
the agent stops, the root is remounted read-only, the machine resets, QEMU exits),
after which e2fsck finds the disk clean with the file written under the freeze.

The last line printed is a JSON object with the results; the exit status is 1 if
any check failed (the JSON then says which, and the console log goes to stderr).
Needs root (namespaces, TAP, nftables).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

from wrennd.guest.client import GuestClient, NotFound
from wrennd.guest.protocol import CommandSpec
from wrennd.network.manager import NetworkManager, SandboxNetwork
from wrennd.network.plan import Naming
from wrennd.sandbox.bringup import boot_args
from wrennd.sandbox.live import guest_client
from wrennd.sandbox.record import SandboxRecord, SandboxState
from wrennd.vm import netns
from wrennd_sim.network_testbed import TestBed

REPO = Path(__file__).resolve().parent.parent
QEMU = "qemu-system-x86_64"
SLOT = 1
VCPUS, MEMORY_MIB = 1, 512
BOOT_TIMEOUT = 60.0
TOTAL_TIMEOUT = 85.0
FROZEN_WAIT = 1.5  # how long a write must stay blocked under FIFREEZE
CLOCK_STEP_S = 86_400  # the guest clock is moved a day ahead, then back
CLOCK_SLACK_S = 5  # TCG is slow: what "the same time" means between host and guest
# What Firecracker appends to the boot arguments for a writable root drive.
FIRECRACKER_ROOT_ARGS = "root=/dev/vda rw"


class CheckFailed(Exception):
    """A check of the guest did not hold; the message says what was seen."""


def check(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


class Qemu:
    """One qemu-system-x86_64 -M microvm process, started inside a network namespace."""

    def __init__(self, proc: subprocess.Popen[bytes], console: Path, started: float) -> None:
        self.proc = proc
        self.console = console
        self.started = started

    @staticmethod
    def argv(kernel: Path, initrd: Path | None, disk: Path, cmdline: str, tap: str) -> list[str]:
        argv = [
            QEMU,
            # auto-kernel-cmdline=off: no virtio_mmio.device= added, the command line is ours.
            "-M", "microvm,acpi=on,auto-kernel-cmdline=off",
            # Guest time from the instruction count: on a loaded host plain TCG can
            # fail the kernel's TSC and PIT calibration, which then boots no further.
            "-accel", "tcg", "-icount", "shift=auto", "-cpu", "max",
            "-smp", str(VCPUS), "-m", str(MEMORY_MIB),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(kernel), "-append", cmdline,
            "-drive", f"id=rootfs,file={disk},format=raw,if=none,cache=none,aio=threads",
            "-device", "virtio-blk-device,drive=rootfs",
            "-netdev", f"tap,id=eth0,ifname={tap},script=no,downscript=no",
            "-device", "virtio-net-device,netdev=eth0",
        ]  # fmt: skip
        if initrd is not None:
            argv += ["-initrd", str(initrd)]
        return argv

    @classmethod
    async def start(cls, argv: list[str], netns_path: Path, work: Path) -> Qemu:
        console = work / "console.log"
        argv = [*argv, "-serial", f"file:{console}"]

        def make() -> subprocess.Popen[bytes]:  # on the spawner thread, in the namespace
            with open(work / "qemu.stderr", "wb") as err:
                return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)

        proc = await netns.spawn(netns_path, make)
        return cls(proc, console, time.monotonic())

    async def exited(self) -> int:
        """QEMU's exit status, once it exits (a pidfd on the loop: no thread blocks)."""
        if self.proc.poll() is None:
            fd = os.pidfd_open(self.proc.pid)  # a zombie's pidfd is readable too
            loop = asyncio.get_running_loop()
            gone: asyncio.Future[None] = loop.create_future()

            def readable() -> None:
                if not gone.done():
                    gone.set_result(None)

            loop.add_reader(fd, readable)
            try:
                await gone
            finally:
                loop.remove_reader(fd)
                os.close(fd)
        return self.proc.wait()

    async def wait(self, within: float) -> int | None:
        try:
            return await asyncio.wait_for(self.exited(), within)
        except TimeoutError:
            return None

    async def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        await self.exited()

    def output(self) -> str:
        """The guest console, then QEMU's own messages."""
        text = []
        for path in (self.console, self.console.with_name("qemu.stderr")):
            with suppress(OSError):
                text.append(path.read_text(errors="replace"))
        return "\n".join(text)


@asynccontextmanager
async def sandbox_network(prefix: str) -> AsyncIterator[tuple[SandboxNetwork, Path]]:
    """Slot 1's namespace, veth, tap0 and NAT on a stand-in host (the test bed)."""
    bed = TestBed(prefix)
    await asyncio.to_thread(bed.build)
    try:
        manager = NetworkManager(
            naming=Naming(prefix=prefix, table="wrennd_smoke"), host_netns=bed.host_path
        )
        await manager.start()
        net = await manager.create(SLOT)
        try:
            yield net, bed.host_path
        finally:
            await manager.remove(SLOT)
    finally:
        await asyncio.to_thread(bed.destroy)


async def run_ok(c: GuestClient, argv: list[str]) -> str:
    res = await c.run(CommandSpec(argv=argv, timeout=30))
    check(res.ok, f"{argv} exited {res.code}: {res.stderr.decode(errors='replace')}")
    return res.stdout.decode().strip()


async def check_health(c: GuestClient, vm: Qemu) -> dict[str, Any]:
    """Wait for /health, or fail at once if QEMU exits first."""
    healthy = asyncio.ensure_future(c.wait_healthy(time.monotonic() + BOOT_TIMEOUT))
    exited = asyncio.ensure_future(vm.exited())
    await asyncio.wait({healthy, exited}, return_when=asyncio.FIRST_COMPLETED)
    exited.cancel()
    if not healthy.done():
        healthy.cancel()
        raise CheckFailed(f"QEMU exited {exited.result()} before the agent answered")
    health = healthy.result()
    boot_s = time.monotonic() - vm.started
    check(health.status == "ok" and not health.frozen, f"health: {health}")
    return {"status": health.status, "api": health.api, "boot_s": round(boot_s, 2)}


async def check_uname(c: GuestClient, meta: dict[str, Any]) -> dict[str, Any]:
    release = await run_ok(c, ["uname", "-r"])
    host = os.uname().release
    check(release != host, f"the guest reports the host's kernel {host}")
    if "release" in meta:
        check(release == meta["release"], f"guest kernel {release}, expected {meta['release']}")
    root = await run_ok(c, ["sh", "-c", "grep ' / ' /proc/mounts"])
    check(root.startswith("/dev/vda / ext4 rw"), f"root is not /dev/vda (ext4, rw): {root}")
    loaded = {line.split()[0] for line in (await run_ok(c, ["cat", "/proc/modules"])).splitlines()}
    wanted = {m.removesuffix(".ko").replace("-", "_") for m in meta.get("modules", [])}
    check(wanted <= loaded, f"modules the initrd should have loaded are not: {wanted - loaded}")
    return {
        "release": release,
        "host_release": host,
        "root_mount": root,
        "modules_loaded": sorted(loaded),
    }


async def check_files(c: GuestClient) -> dict[str, Any]:
    data = secrets.token_bytes(4096) + b"wrenn guest smoke\n"
    info = await c.write_file("/root/smoke.bin", data, mode=0o600)
    back = await c.read_bytes("/root/smoke.bin")
    check(back == data, f"read back {len(back)} bytes, not the {len(data)} written")
    digest = await run_ok(c, ["sha256sum", "/root/smoke.bin"])
    check(digest.split()[0] == hashlib.sha256(data).hexdigest(), "sha256 differs")
    return {"path": "/root/smoke.bin", "bytes": info.size, "read_back": True}


async def _wait_exit(c: GuestClient, ident: str, within: float) -> Any:
    deadline = time.monotonic() + within
    while True:
        info = await c.process(ident)
        if not info.running or time.monotonic() > deadline:
            return info
        await asyncio.sleep(0.1)


async def check_freeze(c: GuestClient) -> dict[str, Any]:
    """FIFREEZE the real root: a write started while frozen blocks, and lands after FITHAW."""
    path = "/root/during-freeze"
    await c.prepare_snapshot(thaw_after=30)
    check((await c.health()).frozen, "/health does not say frozen after prepare")
    writer = await c.start(CommandSpec(shell=f"echo landed > {path}"))
    await asyncio.sleep(FROZEN_WAIT)
    blocked = (await c.process(writer.id)).running
    try:
        await c.stat(path)
        created = True
    except NotFound:
        created = False
    check(blocked and not created, f"a write went through the frozen root (running={blocked})")
    thawed_at = time.monotonic()
    check(await c.thaw() is True, "thaw says the root was not frozen")
    done = await _wait_exit(c, writer.id, 10.0)
    landed_s = time.monotonic() - thawed_at
    check(not done.running and done.code == 0, f"the writer after thaw: {done}")
    check(await c.read_bytes(path) == b"landed\n", "the blocked write did not land")
    return {
        "blocked_while_frozen": True,
        "blocked_s": FROZEN_WAIT,
        "landed_after_thaw": True,
        "landed_s": round(landed_s, 2),
    }


async def _guest_time(c: GuestClient) -> int:
    return int(await run_ok(c, ["date", "+%s"]))


async def check_clock(c: GuestClient) -> dict[str, Any]:
    """/init with a time a day ahead steps the guest clock there; the host's time steps it back."""
    ahead = time.time_ns() + CLOCK_STEP_S * 10**9
    res = await c.init(time_ns=ahead)
    seen = await _guest_time(c)
    check(res.clock_stepped, "init did not step the clock a day ahead")
    check(abs(seen - ahead // 10**9) <= CLOCK_SLACK_S, f"guest clock {seen}, set to {ahead}")
    back = await c.init(time_ns=time.time_ns())
    now = await _guest_time(c)
    check(back.clock_stepped, "init did not step the clock back")
    check(abs(now - time.time()) <= CLOCK_SLACK_S, f"guest clock {now} after the step back")
    return {
        "stepped_ahead_s": round(res.drift_ns / 1e9, 1),
        "stepped_back_s": round(back.drift_ns / 1e9, 1),
        "guest_minus_host_s": round(now - time.time(), 1),
    }


async def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True)


async def check_shutdown(c: GuestClient, vm: Qemu, disk: Path) -> dict[str, Any]:
    """SIGTERM to init, as on a host's power-off: the VM resets by itself and QEMU exits 0."""
    asked = time.monotonic()
    await c.start(CommandSpec(shell="sleep 0.3; kill -TERM 1"))
    code = await vm.wait(30.0)
    check(code is not None, "QEMU still runs 30 s after init was told to stop")
    check(code == 0, f"QEMU exited {code}")
    check("wrenn-init: resetting" in vm.output(), "init never said it was resetting")
    fsck = await _run(["e2fsck", "-fn", str(disk)])
    check(fsck.returncode == 0, f"e2fsck after shutdown: {fsck.stdout[-500:]}")
    cat = await _run(["debugfs", "-R", "cat /root/during-freeze", str(disk)])
    check(cat.stdout == "landed\n", f"the file written under the freeze is not on disk: {cat}")
    return {"exit_code": code, "shutdown_s": round(time.monotonic() - asked, 2), "fsck_clean": True}


CHECKS = ("health", "uname", "file", "freeze", "clock", "shutdown")


async def checks(
    c: GuestClient, vm: Qemu, meta: dict[str, Any], disk: Path, results: dict[str, Any]
) -> None:
    """The checks in CHECKS order, each result kept as soon as it passed."""
    results["health"] = await check_health(c, vm)
    results["uname"] = await check_uname(c, meta)
    results["file"] = await check_files(c)
    results["freeze"] = await check_freeze(c)
    results["clock"] = await check_clock(c)
    results["shutdown"] = await check_shutdown(c, vm, disk)


async def smoke(args: argparse.Namespace, work: Path, results: dict[str, Any]) -> None:
    meta = read_meta(args.kernel, args.meta)
    initrd = args.initrd or (args.kernel.parent / meta["initrd"] if meta.get("initrd") else None)
    results["kernel"] = {k: meta.get(k) for k in ("source", "package", "version", "release")}
    disk = work / "rootfs.ext4"
    cp = await _run(["cp", "--sparse=always", "--reflink=auto", str(args.image), str(disk)])
    check(cp.returncode == 0, f"copying {args.image}: {cp.stderr.strip()}")
    prefix = f"wq{secrets.token_hex(2)}-"
    async with sandbox_network(prefix) as (net, host_netns):
        record = SandboxRecord(id="smoke", state=SandboxState.CREATING, vcpus=VCPUS,
                               memory_mib=MEMORY_MIB)  # fmt: skip
        cmdline = f"{boot_args(record, net.kernel_ip_arg)} {FIRECRACKER_ROOT_ARGS}"
        results["cmdline"] = cmdline
        vm = await Qemu.start(
            Qemu.argv(args.kernel, initrd, disk, cmdline, net.tap), net.netns_path, work
        )
        c, session = guest_client(str(net.host_address), host_netns)
        try:
            await checks(c, vm, meta, disk, results)
        except BaseException:
            sys.stderr.write(f"--- guest console and QEMU\n{vm.output()[-6000:]}\n")
            raise
        finally:
            await vm.kill()
            await c.close()
            if session is not None:
                await session.close()


def read_meta(kernel: Path, meta: Path | None) -> dict[str, Any]:
    path = meta or Path(f"{kernel}.json")
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckFailed(f"kernel metadata {path}: {e} (make kernel writes it)") from e
    if not isinstance(obj, dict):
        raise CheckFailed(f"kernel metadata {path} is not a JSON object")
    return obj


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", type=Path, default=REPO / "build" / "vmlinux")
    ap.add_argument("--initrd", type=Path, help="default: the one <kernel>.json names")
    ap.add_argument("--meta", type=Path, help="kernel metadata (default <kernel>.json)")
    ap.add_argument("--image", type=Path, default=REPO / "build" / "base.ext4")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        sys.exit("guest-smoke: needs root (network namespaces, TAP, nftables)")
    results: dict[str, Any] = {"ok": False}
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="wrenn-guest-smoke-"))
    try:
        asyncio.run(asyncio.wait_for(smoke(args, work, results), TOTAL_TIMEOUT))
        results["ok"] = True
    except Exception as e:  # a check, the agent, QEMU or the network: still one JSON line
        step = next((k for k in CHECKS if k not in results), "setup")
        results["failed"] = step if "cmdline" in results else "setup"
        results["error"] = f"{type(e).__name__}: {e}"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["elapsed_s"] = round(time.monotonic() - started, 2)
    print(json.dumps(results))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
