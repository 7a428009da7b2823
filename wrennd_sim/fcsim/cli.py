"""The ``fcsim`` command: Firecracker's command line, Firecracker's API, no KVM needed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import uvloop
from aiohttp import web

from wrennd_sim.fcsim import FIRECRACKER_VERSION
from wrennd_sim.fcsim.control import ControlServer
from wrennd_sim.fcsim.guest import GuestRunner, reap_orphans
from wrennd_sim.fcsim.guesthelper import RemoteGuest
from wrennd_sim.fcsim.machine import Machine
from wrennd_sim.fcsim.server import ApiServer
from wrennd_sim.fcsim.spec import api_spec
from wrennd_sim.fcsim.vmmlog import LEVELS, VmmLog


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="fcsim",
        description=f"Firecracker-compatible simulator (API v{FIRECRACKER_VERSION})"
        " for hosts without KVM.",
    )
    p.add_argument("--api-sock", type=Path, default=Path("/run/firecracker.socket"))
    p.add_argument("--id", default="anonymous-instance")
    p.add_argument("--log-path", type=Path)
    p.add_argument("--level", default="Info", type=str.capitalize)
    p.add_argument("--show-level", action="store_true")
    p.add_argument("--show-log-origin", action="store_true")
    p.add_argument("--metrics-path", type=Path)
    p.add_argument("--module")
    # Accepted for command-line compatibility; fcsim has no seccomp filters or boot timer.
    p.add_argument("--boot-timer", action="store_true")
    p.add_argument("--no-seccomp", action="store_true")
    p.add_argument("--seccomp-filter")
    p.add_argument("--http-api-max-payload-size", type=int, default=51200)
    p.add_argument("--mmds-size-limit", type=int)
    p.add_argument("--version", action="store_true")
    # What the jailer adds when it execs Firecracker (accepted, unused).
    p.add_argument("--start-time-us", type=int)
    p.add_argument("--start-time-cpu-us", type=int)
    p.add_argument(
        "--guest-helper-fd",
        type=int,
        help="fcsim only: run the guest through fcsim-jailer's root guest helper on this fd",
    )
    p.add_argument(
        "--reap-orphans",
        action="store_true",
        help="fcsim only: remove the guests (cgroups, processes) of killed fcsim processes, exit",
    )
    p.add_argument(
        "--control-sock",
        type=Path,
        help="fcsim only: the control socket (default: the API socket path + '.ctl')",
    )
    args = p.parse_args(argv)
    if args.level.lower() not in LEVELS:
        p.error(f"--level {args.level}: expected one of {', '.join(LEVELS)}")
    return args


async def serve(args: argparse.Namespace) -> int:
    log = VmmLog(args.id, args.level, args.show_level)
    if args.log_path is not None:
        log.reopen(args.log_path)
    loop = asyncio.get_running_loop()
    # A signal number, or 0 when the guest shut down (Firecracker exits then too).
    stop: asyncio.Future[int] = loop.create_future()

    def finish(code: int) -> None:
        if not stop.done():
            stop.set_result(code)

    guest: GuestRunner | RemoteGuest
    if args.guest_helper_fd is not None:  # jailed: the guest needs root, fcsim has none
        guest = RemoteGuest(args.guest_helper_fd, log, on_exit=lambda rc: finish(0))
    else:
        guest = GuestRunner(args.api_sock.parent, log, on_exit=lambda rc: finish(0))
    machine = Machine(args.id, log, guest)
    if args.metrics_path is not None:
        machine.put_metrics({"metrics_path": str(args.metrics_path)})
    api = ApiServer(machine, api_spec())
    api.app._client_max_size = args.http_api_max_payload_size
    runner = web.AppRunner(api.app, handle_signals=False, access_log=None)
    await runner.setup()
    with contextlib.suppress(FileNotFoundError):
        args.api_sock.unlink()
    site = web.UnixSite(runner, str(args.api_sock))
    control = ControlServer(machine, args.control_sock or Path(f"{args.api_sock}.ctl"))
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, finish, sig)
    try:
        await control.start()
        await site.start()
        log.info(f"fcsim API (Firecracker v{FIRECRACKER_VERSION}) on {args.api_sock}")
        return await stop
    finally:
        await runner.cleanup()
        await control.close()
        await machine.close()
        machine.close_memory()
        with contextlib.suppress(FileNotFoundError):
            args.api_sock.unlink()
        log.info("fcsim exiting")
        log.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.version:
        print(f"Firecracker v{FIRECRACKER_VERSION} (fcsim)")
        return
    if args.reap_orphans:
        reap_orphans(VmmLog(args.id, args.level, args.show_level))
        return
    try:
        sig = uvloop.run(serve(args))
    except OSError as e:
        print(f"fcsim: {e}", file=sys.stderr)
        sys.exit(1)
    if sig == 0:
        sys.exit(0)
    # Die by the signal that stopped us, as Firecracker (no handler) would.
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)


if __name__ == "__main__":
    main()
