"""Host-side client of the guest agent: typed results, async iterators for streams.

Only idempotent calls (reads, stat, list, health, metrics, thaw) are retried,
and only when the connection failed before an answer; a command or a write is
never sent twice.  Streams are async generators: leaving one early (use
``contextlib.aclosing``) drops the connection, and the agent then kills the
command's process group.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

from wrennd.guest import protocol as p
from wrennd.guest.protocol import CommandSpec, Event, Exited, FileInfo, Output, ProcessInfo
from wrennd.guest.session import GuestSession

STREAM_CHUNK = 256 * 1024


class GuestError(Exception):
    """The agent refused a request; ``code`` is one of the protocol's error codes."""

    def __init__(self, code: str, message: str, status: int, details: dict[str, Any]) -> None:
        super().__init__(f"guest agent: {message} ({code}, HTTP {status})")
        self.code = code
        self.message = message
        self.status = status
        self.details = details


class NotFound(GuestError):
    pass


class PermissionDenied(GuestError):
    pass


class NotADirectory(GuestError):
    pass


class IsADirectory(GuestError):
    pass


class AlreadyExists(GuestError):
    pass


class DirectoryNotEmpty(GuestError):
    pass


class ProcessNotFound(GuestError):
    pass


class Conflict(GuestError):
    pass


class BadRequest(GuestError):
    pass


class AgentUnavailable(Exception):
    """The agent could not be reached (not up yet, gone, or the deadline passed)."""


_ERRORS: dict[str, type[GuestError]] = {
    p.ENOENT: NotFound,
    p.EACCES: PermissionDenied,
    p.ENOTDIR: NotADirectory,
    p.EISDIR: IsADirectory,
    p.EEXIST: AlreadyExists,
    p.ENOTEMPTY: DirectoryNotEmpty,
    p.NO_PROCESS: ProcessNotFound,
    p.CONFLICT: Conflict,
}


@dataclass(frozen=True)
class Health:
    status: str
    api: int
    pid: int
    frozen: bool


@dataclass(frozen=True)
class InitResult:
    thawed: bool
    drift_ns: int
    clock_stepped: bool


@dataclass(frozen=True)
class ExecResult:
    pid: int
    stdout: bytes
    stderr: bytes
    code: int | None
    signal: int | None
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.code == 0


async def _raise_for(resp: aiohttp.ClientResponse) -> None:
    if resp.status < 400:
        return
    text = await resp.text(errors="replace")
    try:
        err = p.parse_object(text)["error"]
        code, message = str(err["code"]), str(err["message"])
    except (p.ProtocolError, KeyError, TypeError):
        # Not from a handler: aiohttp's own refusal (oversized headers, ...).
        raise BadRequest(p.BAD_REQUEST, text.strip()[:500], resp.status, {}) from None
    details = {k: v for k, v in err.items() if k not in ("code", "message")}
    raise _ERRORS.get(code, BadRequest)(code, message, resp.status, details)


async def _lines(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """NDJSON lines of a streamed body, whatever their length."""
    pending = b""
    async for chunk in resp.content.iter_any():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if pending.strip():
        yield pending


def _health(obj: Any) -> Health:
    return Health(str(obj["status"]), int(obj["api"]), int(obj["pid"]), bool(obj["frozen"]))


class GuestClient:
    """One guest agent at ``base_url`` (``http://169.254.0.21:49983``)."""

    def __init__(
        self,
        base_url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        retries: int = 3,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._own_session = session is None
        self._session = session or aiohttp.ClientSession()
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        # Streams may be quiet for long (a command that prints nothing): no total timeout.
        self.stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout)
        self.retries = retries

    async def close(self) -> None:
        if self._own_session:
            await self._session.close()

    async def __aenter__(self) -> GuestClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        http_timeout: aiohttp.ClientTimeout | None = None,
        **kw: Any,
    ) -> Any:
        """One JSON request; connection failures of idempotent calls are retried."""
        attempts = self.retries + 1 if idempotent else 1
        for attempt in range(attempts):
            try:
                async with self._session.request(
                    method, self.base_url + path, timeout=http_timeout or self.timeout, **kw
                ) as resp:
                    await _raise_for(resp)
                    return await resp.json()
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                if attempt + 1 == attempts:
                    raise AgentUnavailable(f"{method} {path}: {exc!r}") from exc
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    async def _stream(
        self, method: str, path: str, **kw: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        try:
            async with self._session.request(
                method, self.base_url + path, timeout=self.stream_timeout, **kw
            ) as resp:
                await _raise_for(resp)
                yield resp
        except aiohttp.ClientConnectionError as exc:
            raise AgentUnavailable(f"{method} {path}: {exc!r}") from exc

    async def _events(self, method: str, path: str, **kw: Any) -> AsyncIterator[Event]:
        async for resp in self._stream(method, path, **kw):
            async for line in _lines(resp):
                yield p.event_from_json(p.parse_object(line))

    # health and init

    async def health(self) -> Health:
        return _health(await self._call("GET", "/health", idempotent=True))

    async def wait_healthy(self, deadline: float, interval: float = 0.05) -> Health:
        """Poll /health until it answers or ``deadline`` (time.monotonic()) passes."""
        last: BaseException | None = None
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                call = self._call("GET", "/health", idempotent=False)
                return _health(await asyncio.wait_for(call, remaining))
            except (TimeoutError, AgentUnavailable) as exc:
                last = exc
            await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        raise AgentUnavailable(f"guest agent at {self.base_url} not healthy in time: {last!r}")

    async def init(
        self, env: dict[str, str] | None = None, user: str | None = None, time_ns: int | None = None
    ) -> InitResult:
        req = p.InitRequest(env or {}, user, time_ns)
        obj = await self._call("POST", "/init", idempotent=False, json=req.to_json())
        return InitResult(bool(obj["thawed"]), int(obj["drift_ns"]), bool(obj["clock_stepped"]))

    # commands

    def exec(self, spec: CommandSpec) -> AsyncIterator[Event]:
        """Run a command, yielding Started, Output... and Exited as they happen."""
        return self._events("POST", "/exec", json=spec.to_json())

    async def run(self, spec: CommandSpec) -> ExecResult:
        """Run a command to completion and collect its output."""
        out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        pid, exit_ = 0, None
        async for event in self.exec(spec):
            if isinstance(event, Output):
                out[event.stream].append(event.data)
            elif isinstance(event, Exited):
                exit_ = event
            elif isinstance(event, p.Started):
                pid = event.pid
        if exit_ is None:
            raise AgentUnavailable("exec stream ended without an exit event")
        stdout, stderr = b"".join(out["stdout"]), b"".join(out["stderr"])
        return ExecResult(pid, stdout, stderr, exit_.code, exit_.signal, exit_.timed_out)

    async def session(
        self, spec: CommandSpec, *, pty: bool = False, rows: int = 24, cols: int = 80
    ) -> GuestSession:
        """An interactive command: stdin streamed in, optionally on a terminal."""
        url = self.base_url + "/exec/session"
        try:
            opening = GuestSession.open(self._session, url, spec, pty=pty, rows=rows, cols=cols)
            return await asyncio.wait_for(opening, self.timeout.total)
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            raise AgentUnavailable(f"GET /exec/session: {exc!r}") from exc

    async def start(self, spec: CommandSpec) -> ProcessInfo:
        obj = await self._call("POST", "/processes", idempotent=False, json=spec.to_json())
        return ProcessInfo.from_json(obj)

    async def processes(self) -> list[ProcessInfo]:
        obj = await self._call("GET", "/processes", idempotent=True)
        return [ProcessInfo.from_json(x) for x in obj["processes"]]

    async def process(self, ident: str) -> ProcessInfo:
        return ProcessInfo.from_json(
            await self._call("GET", f"/processes/{ident}", idempotent=True)
        )

    async def signal(self, ident: str, sig: int | str = 15, group: bool = True) -> None:
        body = {"signal": sig, "group": group}
        await self._call("POST", f"/processes/{ident}/signal", idempotent=False, json=body)

    async def forget(self, ident: str) -> None:
        await self._call("DELETE", f"/processes/{ident}", idempotent=False)

    def attach(self, ident: str, since: int = 0, follow: bool = True) -> AsyncIterator[Event]:
        """A background process's retained output from ``since`` on, then live output."""
        params = {"since": str(since), "follow": "1" if follow else "0"}
        return self._events("GET", f"/processes/{ident}/output", params=params)

    # files

    async def read_file(self, path: str) -> AsyncIterator[bytes]:
        async for resp in self._stream("GET", "/files", params={"path": path}):
            async for chunk in resp.content.iter_chunked(STREAM_CHUNK):
                yield chunk

    async def read_bytes(self, path: str) -> bytes:
        return b"".join([chunk async for chunk in self.read_file(path)])

    async def write_file(
        self,
        path: str,
        data: bytes | AsyncIterable[bytes],
        *,
        mode: int | None = None,
        user: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
    ) -> FileInfo:
        """Write (atomically replace) a file from bytes or a stream of chunks."""
        params = {"path": path}
        for key, value in (("mode", None if mode is None else f"{mode:o}"), ("user", user)):
            if value is not None:
                params[key] = value
        for key, num in (("uid", uid), ("gid", gid)):
            if num is not None:
                params[key] = str(num)
        # A streamed body takes as long as its source: no total deadline, only on connecting.
        timeout = self.timeout if isinstance(data, bytes) else self.stream_timeout
        obj = await self._call(
            "PUT", "/files", idempotent=False, http_timeout=timeout, params=params, data=data
        )
        return FileInfo.from_json(obj)

    async def stat(self, path: str) -> FileInfo:
        obj = await self._call("GET", "/files/stat", idempotent=True, params={"path": path})
        return FileInfo.from_json(obj)

    async def list_dir(self, path: str) -> list[FileInfo]:
        obj = await self._call("GET", "/files/list", idempotent=True, params={"path": path})
        return [FileInfo.from_json(x) for x in obj["entries"]]

    async def mkdir(
        self, path: str, mode: int | None = None, parents: bool = True, user: str | None = None
    ) -> bool:
        """Create a directory (like mkdir -p by default); False if it already existed."""
        body = {"path": path, "mode": mode, "parents": parents, "user": user}
        return bool(
            (await self._call("POST", "/files/mkdir", idempotent=True, json=body))["created"]
        )

    async def remove(self, path: str, recursive: bool = False) -> None:
        body = {"path": path, "recursive": recursive}
        await self._call("POST", "/files/remove", idempotent=False, json=body)

    # snapshots and metrics

    async def prepare_snapshot(
        self, thaw_after: float | None = None, deadline: float | None = None
    ) -> None:
        """Sync and freeze the guest's root filesystem; returns once it is frozen, or
        Conflict when that did not happen within ``deadline`` s (the agent's default)."""
        body = {"thaw_after": thaw_after, "deadline": deadline}
        await self._call("POST", "/snapshot/prepare", idempotent=False, json=body)

    async def thaw(self) -> bool:
        return bool((await self._call("POST", "/snapshot/thaw", idempotent=True))["thawed"])

    async def metrics(self) -> p.Metrics:
        return p.Metrics.from_json(await self._call("GET", "/metrics", idempotent=True))
