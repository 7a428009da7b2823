"""wrennd: wiring, configuration, systemd notifications, signals and graceful shutdown.

Startup: load the settings, open the API socket (or take systemd's), probe
the VMM binary, register the methods, serve, then tell systemd READY=1.

SIGTERM/SIGINT: STOPPING=1; stop accepting; read work ends with ShuttingDown
answers; lifecycle calls run to completion; then the shutdown hooks run in
registration order (the sandbox manager pauses every sandbox there), all
within ``shutdown_timeout`` seconds.  SIGHUP re-reads the configuration and
applies the log level; other settings take effect at the next start.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import uvloop

from wrennd import __version__, config, features, log, permissions
from wrennd.listener import Listener, ListenerError, open_listener
from wrennd.log import kv
from wrennd.metrics import LoopLag, Sections
from wrennd.rpc import host, sandbox_methods, views
from wrennd.rpc.methods import CallContext, MethodTable
from wrennd.rpc.server import Limits, RpcServer
from wrennd.sandbox.service import SandboxService
from wrennd.storage.errors import StorageError
from wrennd.systemd import ActivationError, Notifier, inherited_fds, watchdog_interval
from wrennd.vm.kernel import describe as describe_kernel
from wrennd.web.server import WebConsole

logger = logging.getLogger("wrennd.daemon")
# Exit status for a configuration error: the unit's RestartPreventExitStatus.
EXIT_CONFIG = 2
# Seconds read work gets to send its ShuttingDown answers, and open connections to drain.
DRAIN_TIMEOUT = 2.0
# How long a shutdown hook cut off at the deadline may take to unwind before the daemon goes on.
CANCEL_GRACE = 1.0


@dataclasses.dataclass
class ShutdownContext:
    """What a shutdown hook gets: the deadline (time.monotonic) and a way to tell systemd."""

    deadline: float
    notifier: Notifier

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def status(self, text: str) -> None:
        self.notifier.status(text)


ShutdownHook = Callable[[ShutdownContext], Awaitable[None]]
StartupHook = Callable[[], Awaitable[None]]


class Daemon:
    """The running daemon; components extend ``methods``, ``info``, ``stats`` and hooks."""

    def __init__(
        self,
        settings: config.Settings,
        listener: Listener,
        notifier: Notifier,
        config_path: Path | None = None,
    ) -> None:
        self.settings = settings
        self.listener = listener
        self.notifier = notifier
        self.config_path = config_path
        self.methods = MethodTable()
        self.info = Sections()
        self.stats = Sections()
        self.lag = LoopLag()
        self.started = time.monotonic()
        self.server = RpcServer(
            self.methods,
            Limits(
                max_message_bytes=settings.rpc_max_message_bytes,
                max_inflight=settings.rpc_max_inflight,
                max_connections=settings.rpc_max_connections,
            ),
        )
        self._hooks: list[tuple[str, ShutdownHook]] = []
        self._startup: list[tuple[str, StartupHook]] = []
        self._stop: asyncio.Event | None = None
        self._background: set[asyncio.Future[Any]] = set()
        # At stop: leave running sandboxes to the next daemon (on_stop = "keep", host.restart).
        self.keep_sandboxes = False
        # What systemd's fd store gave back at start, by FDNAME (the uffd hand-over).
        self.handed_fds: dict[str, int] = {}

    def on_shutdown(self, name: str, hook: ShutdownHook) -> None:
        """Run ``hook`` on SIGTERM after lifecycle calls finished, before the daemon exits."""
        self._hooks.append((name, hook))

    def on_startup(self, name: str, hook: StartupHook) -> None:
        """Run ``hook`` on the event loop before the first request is served (recovery)."""
        self._startup.append((name, hook))

    def request_stop(self) -> None:
        if self._stop is not None and not self._stop.is_set():
            logger.info("stop requested")
            self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for name, hook in self._startup:
            self.notifier.status(f"starting: {name}")
            try:
                await hook()
            except Exception:
                logger.exception("startup hook failed", extra=kv(hook=name))
                self.listener.remove()
                self.notifier.close()
                return 1
        await self.server.serve(self.listener.sock)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self._reload()))
        self._spawn(self.lag.run())
        interval = watchdog_interval()
        if interval is not None:
            self._spawn(self._watchdog(interval))
        status = f"serving on {self.listener.path}"
        self.notifier.ready(status)
        logger.info(
            "ready",
            extra=kv(
                socket=self.listener.path,
                activated=self.listener.activated,
                methods=len(self.methods),
                watchdog_s=interval,
            ),
        )
        await self._stop.wait()
        return await self._shutdown()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _watchdog(self, interval: float) -> None:
        # Pinged from the loop itself: a stuck loop misses pings and systemd restarts us.
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _reload(self) -> None:
        self.notifier.reloading()
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(None, config.load, self.config_path)
        except config.ConfigError as e:
            logger.error("reload failed; the running configuration stays", extra=kv(error=e))
        else:
            if new.log_level != self.settings.log_level:
                log.set_level(new.log_level)
                logger.info(
                    "log level changed", extra=kv(old=self.settings.log_level, new=new.log_level)
                )
            later = [
                f.name
                for f in dataclasses.fields(new)
                if f.name != "log_level" and getattr(new, f.name) != getattr(self.settings, f.name)
            ]
            if later:
                logger.warning("changed settings apply at restart", extra=kv(keys=",".join(later)))
            self.settings = dataclasses.replace(self.settings, log_level=new.log_level)
        self.notifier.ready(f"serving on {self.listener.path}")

    async def _shutdown(self) -> int:
        deadline = time.monotonic() + self.settings.shutdown_timeout
        ctx = ShutdownContext(deadline, self.notifier)
        self.notifier.stopping("stopping: finishing calls")
        logger.info("stopping", extra=kv(timeout_s=self.settings.shutdown_timeout))
        self.server.stop_accepting()
        self.listener.remove()
        await self.server.stop_reads(min(DRAIN_TIMEOUT, ctx.remaining()))
        clean = await self.server.wait_lifecycle(ctx.remaining()) == 0
        if not clean:
            logger.error("lifecycle calls still running at the shutdown deadline")
        for name, hook in self._hooks:
            ctx.status(f"stopping: {name}")
            clean = await self._run_hook(name, hook(ctx), ctx) and clean
        await self.server.close(min(DRAIN_TIMEOUT, ctx.remaining()))
        background = list(self._background)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        logger.info("stopped", extra=kv(clean=clean))
        self.notifier.close()
        return 0 if clean else 1

    @staticmethod
    async def _run_hook(name: str, work: Awaitable[None], ctx: ShutdownContext) -> bool:
        """Run one hook until the deadline; False if it failed or was cut off.

        Not asyncio.wait_for: that waits for the cancelled hook to finish unwinding,
        and a hook stuck on a stopped VMM can take its API timeouts to unwind. The
        deadline is kept; what a cut-off hook left is recovery's at the next start."""
        task = asyncio.ensure_future(work)
        await asyncio.wait({task}, timeout=ctx.remaining())
        if not task.done():
            logger.error("shutdown hook ran out of time", extra=kv(hook=name))
            task.cancel()
            await asyncio.wait({task}, timeout=CANCEL_GRACE)
            return False
        if task.cancelled() or task.exception() is not None:
            logger.error("shutdown hook failed", exc_info=task.exception(), extra=kv(hook=name))
            return False
        return True


def raise_fd_limit() -> None:
    """Every connection and sandbox costs fds: use the whole hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wire(daemon: Daemon) -> None:
    """Register every component's methods, sections and hooks (components add theirs here)."""
    settings = daemon.settings
    vmm = features.binary_version(settings.firecracker_bin)
    jailer = None
    if settings.use_jailer and settings.jailer_bin is not None:
        jailer = features.binary_version(settings.jailer_bin)
    facts = host.HostFacts(settings, daemon.listener.path, daemon.listener.activated, vmm, jailer)
    host.register(
        daemon.methods, facts, daemon.server, daemon.lag, daemon.info, daemon.stats, daemon.started
    )
    sandboxes = SandboxService.from_settings(settings, daemon.notifier, daemon.handed_fds)
    sandbox_methods.register(daemon.methods, sandboxes)
    daemon.stats.add("sandboxes", sandboxes.registry.counts_by_state)
    daemon.stats.add("uffd", lambda: views.uffd_totals(sandboxes))
    daemon.stats.add("scrub", sandboxes.scrubber.stats)
    daemon.stats.add("engines", lambda: views.engine_states(sandboxes))
    daemon.stats.add("ksm", sandboxes.sharing.stats)
    daemon.info.add("ksm", sandboxes.sharing.info)
    chosen = sandboxes.storage.backend.name
    daemon.info.add("storage", lambda: {"configured": settings.storage_backend, "backend": chosen})
    kernel_facts = describe_kernel(settings.kernel_path)  # where make kernel got it; read once
    daemon.info.add("kernel", lambda: kernel_facts)
    daemon.on_startup("sandbox recovery", sandboxes.start)
    daemon.keep_sandboxes = settings.on_stop == "keep"

    async def stop_sandboxes(ctx: ShutdownContext) -> None:
        await sandboxes.shutdown(ctx, keep=daemon.keep_sandboxes)

    daemon.on_shutdown("pause or keep sandboxes", stop_sandboxes)

    @daemon.methods.register(
        "host.restart",
        mutating=True,
        doc="stop the daemon and leave running sandboxes to the next one (an upgrade)",
    )
    async def host_restart(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        daemon.keep_sandboxes = True
        daemon.request_stop()
        return {"stopping": True, "sandboxes_kept": True}

    if settings.http_address is not None:
        console = WebConsole(settings, daemon.server, sandboxes, daemon.lag)
        daemon.on_startup("http console", console.start)
        daemon.on_shutdown("http console", lambda _: console.stop())


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wrennd", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="TOML settings file")
    parser.add_argument(
        "--fix-permissions",
        action="store_true",
        help="take group and other access away from everything in state_dir",
    )
    parser.add_argument("--version", action="version", version=f"wrennd {__version__}")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, extend: Callable[[Daemon], None] | None = None) -> int:
    """Run the daemon until it is stopped; ``extend`` adds methods/hooks (used by tests)."""
    args = _parse_args(argv)
    try:
        settings = config.load(args.config)
    except config.ConfigError as e:
        print(f"wrennd: {e}", file=sys.stderr)
        return EXIT_CONFIG
    log.setup(settings.log_level)
    raise_fd_limit()
    # Everything the daemon and its VMMs create is private, whatever umask started us.
    permissions.private_umask()
    notifier = Notifier.from_env()
    try:
        inherited = inherited_fds()
        listener = open_listener(settings.socket_path, settings.socket_group, inherited.sockets)
    except (ListenerError, ActivationError) as e:
        logger.error("cannot start", extra=kv(error=e))
        return 1
    daemon = Daemon(settings, listener, notifier, args.config)
    daemon.handed_fds = inherited.stored
    # Blocking probes (VMM --version, storage backend) run here, before the loop and READY=1.
    try:
        permissions.make_state_dir(settings.state_dir)
        permissions.check(settings.state_dir, fix=args.fix_permissions)
        wire(daemon)
    except (OSError, ValueError, StorageError) as e:
        logger.error("cannot start", extra=kv(error=e))
        listener.remove()
        return 1
    if extend is not None:
        extend(daemon)
    result: int = uvloop.run(daemon.run())
    return result


if __name__ == "__main__":
    sys.exit(main())
