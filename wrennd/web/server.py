"""The console's HTTP server: routes, the listener, the token's life.

Started by the daemon (a startup hook) when ``http_listen`` is set; it writes
a new token at every start and removes it at stop.  Static files are read
from the package once, at start: no build step, nothing fetched from outside.
"""

from __future__ import annotations

import grp
import importlib.resources
import logging
import os
from pathlib import Path

from aiohttp import web

from wrennd.config import HttpAddress, Settings
from wrennd.log import kv
from wrennd.metrics import LoopLag
from wrennd.rpc.server import RpcServer
from wrennd.sandbox import SandboxService
from wrennd.web.auth import Guard, write_token
from wrennd.web.bridge import Bridge
from wrennd.web.metrics import ConsoleMetrics

log = logging.getLogger("wrennd.web")
STATIC = {
    "console.js": "text/javascript",
    "console.css": "text/css",
}
# Seconds requests still running at stop get to finish (the daemon's calls ended before).
STOP_GRACE = 2.0
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
# Pages send no referrer and may not be framed; scripts only from here.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _read_static(name: str) -> bytes:
    return importlib.resources.files("wrennd.web").joinpath("static", name).read_bytes()


class WebConsole:
    def __init__(
        self, settings: Settings, server: RpcServer, service: SandboxService, lag: LoopLag
    ) -> None:
        address = settings.http_address
        if address is None:
            raise ValueError("http_listen is not set")
        self.settings = settings
        self.address: HttpAddress = address
        self.token_path: Path = settings.http_token_path
        self.bridge = Bridge(server)
        self.metrics = ConsoleMetrics(server, service, lag, settings.templates_dir)
        self._files = {name: _read_static(name) for name in (*STATIC, "index.html")}
        self._runner: web.AppRunner | None = None

    def app(self, token: str) -> web.Application:
        guard = Guard(token, self.address, self.settings.http_allow_remote)
        # A larger body: the bridge answers MessageTooLarge, as the socket does.
        app = web.Application(
            middlewares=[guard.middleware], client_max_size=self.bridge.limits.max_message_bytes
        )
        app.on_response_prepare.append(_secure)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/test", self._page)
        app.router.add_get("/", self._root)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/rpc", self.bridge.post)
        app.router.add_get("/rpc", self.bridge.websocket)
        return app

    async def start(self) -> None:
        token = write_token(self.token_path, self.settings.socket_group)
        runner = web.AppRunner(
            self.app(token), access_log=None, handle_signals=False, shutdown_timeout=STOP_GRACE
        )
        await runner.setup()
        a = self.address
        site: web.BaseSite
        if a.path is not None:
            site = web.UnixSite(runner, str(a.path))
        else:
            site = web.TCPSite(runner, a.host, a.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            self.token_path.unlink(missing_ok=True)
            raise
        if a.path is not None:
            _share_with_group(a.path, self.settings.socket_group)
        self._runner = runner
        log.info("console listening", extra=kv(listen=self.settings.http_listen))

    async def stop(self) -> None:
        self.token_path.unlink(missing_ok=True)
        if self._runner is not None:
            await self.bridge.close_sockets()
            await self._runner.cleanup()
            self._runner = None
        if self.address.path is not None:
            self.address.path.unlink(missing_ok=True)

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok\n")

    async def _root(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther(location="/test")

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._files["index.html"], content_type="text/html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=self._files[name], content_type=STATIC[name])

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        body = await self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": PROMETHEUS_TEXT})


def _share_with_group(path: Path, group: str) -> None:
    """A Unix-socket console is the API socket's peer: mode 0660, group ``socket_group``."""
    path.chmod(0o660)
    try:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    except KeyError:
        log.info("socket group does not exist; console socket stays root's", extra=kv(group=group))


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
