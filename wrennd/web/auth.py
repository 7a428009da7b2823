"""Who may use the console: the token in ``run_dir/http.token``, and same-origin requests only.

Every request but ``/healthz`` carries the token: ``Authorization: Bearer``,
or the HttpOnly, SameSite=Strict cookie that ``GET /test?token=`` sets once
(the page's own requests then carry it).  The token is new at every start, so
an old one stops working with the daemon that wrote it.

State-changing requests (POST, a WebSocket upgrade) must come from the
console's own origin when they carry an ``Origin``; a cookie-authenticated one
must carry it (browsers do), so another site cannot ride the operator's
cookie.  The ``Host`` must name this host's loopback (against DNS rebinding)
unless the operator allowed remote listening or listens on a Unix socket.
"""

from __future__ import annotations

import grp
import hmac
import ipaddress
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import hdrs, web

from wrennd import durable
from wrennd.config import HttpAddress

COOKIE = "wrennd_console"
TOKEN_MODE = 0o640
OPEN_PATHS = frozenset({"/healthz"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def write_token(path: Path, group: str) -> str:
    """A new random token, written durably (mode 0640, group ``group`` when it exists)."""
    token = secrets.token_urlsafe(32)
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        gid = -1
    with durable.replacing(path, TOKEN_MODE) as fd:
        if gid >= 0:
            os.fchown(fd, -1, gid)
        durable.write_all(fd, (token + "\n").encode())
    return token


def _loopback_host(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Guard:
    """The aiohttp middleware that enforces the rules above."""

    def __init__(self, token: str, address: HttpAddress, allow_remote: bool) -> None:
        self.token = token
        self.check_host = address.path is None and not allow_remote

    def _token_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented, self.token)

    def _presented(self, request: web.Request) -> tuple[str | None, bool]:
        """The token the request carries and whether it came as the cookie."""
        auth = request.headers.get(hdrs.AUTHORIZATION, "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip(), False
        cookie = request.cookies.get(COOKIE)
        return cookie, cookie is not None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        if self.check_host and not _loopback_host(request.host):
            raise web.HTTPForbidden(text="this console answers only to its loopback address\n")
        presented, by_cookie = self._presented(request)
        changing = request.method not in ("GET", "HEAD") or _is_upgrade(request)
        if changing and not self._same_origin(request, required=by_cookie):
            raise web.HTTPForbidden(text="cross-origin request refused\n")
        if request.path == "/test" and "token" in request.query:
            self._login(request)
        if not self._token_ok(presented):
            raise web.HTTPUnauthorized(
                text="a valid token is required (run_dir/http.token)\n",
                headers={hdrs.WWW_AUTHENTICATE: "Bearer"},
            )
        return await handler(request)

    def _same_origin(self, request: web.Request, required: bool) -> bool:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None:
            return not required
        return origin == f"{request.scheme}://{request.host}"

    def _login(self, request: web.Request) -> None:
        """``?token=`` once: swap it for the cookie, and drop it from the address bar."""
        if not self._token_ok(request.query["token"]):
            raise web.HTTPUnauthorized(text="wrong or old token\n")
        response = web.HTTPSeeOther(location="/test")
        response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict", path="/")
        raise response


def _is_upgrade(request: web.Request) -> bool:
    return request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
