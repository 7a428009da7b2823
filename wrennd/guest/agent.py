"""The guest agent: an HTTP API inside the VM that runs commands and moves files for the host.

Runs as root in the guest under Debian's python3 with python3-aiohttp (3.8 on
bookworm): it imports only the standard library, aiohttp and its own guest
modules (agent_fs, agent_proc, protocol), which is all the image carries.
The API is documented in docs/guest-agent.md.

    python3 -m wrennd.guest.agent [--host 0.0.0.0] [--port 49983] [--root /]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from wrennd.guest import agent_fs as fs
from wrennd.guest import agent_session
from wrennd.guest import protocol as p
from wrennd.guest.agent_proc import Defaults, Job, ProcessTable, abandon, spawn

FILE_CHUNK = 256 * 1024
MAX_JSON_BODY = 16 << 20  # exec stdin travels inside the JSON body
DEFAULT_THAW_AFTER = 60.0  # seconds a frozen filesystem waits for the host's thaw
# Seconds sync + FIFREEZE may take before prepare answers that it could not (below the
# host client's 30 s request timeout, so the host hears why).
DEFAULT_PREPARE_DEADLINE = 20.0
CLOCK_TOLERANCE_NS = 50_000_000  # smaller drifts are not worth stepping the clock
T = TypeVar("T")


class Agent:
    """State shared by the handlers: root, defaults, background processes, freezer."""

    def __init__(self, root: str, set_clock: bool, keep_output: int) -> None:
        self.root = fs.Root(os.path.realpath(root))
        self.set_clock = set_clock
        self.defaults = Defaults()
        self.procs = ProcessTable(keep_output)
        self.freezer = fs.Freezer(self.root)
        self.cpu_sample = _cpu_times()

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args))


AGENT = web.AppKey("agent", Agent) if hasattr(web, "AppKey") else "agent"  # AppKey: aiohttp≥3.9


def _agent(request: web.Request) -> Agent:
    return request.app[AGENT]


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.json_response(obj, status=status)


async def _body(request: web.Request) -> p.JSON:
    raw = await request.read()
    return p.parse_object(raw) if raw.strip() else {}


def _query_path(request: web.Request) -> str:
    return p.path_field(dict(request.query))


@web.middleware
async def errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure becomes ``{"error": {"code", "message", ...}}`` with a fitting status."""
    try:
        return await handler(request)
    except fs.AgentError as exc:
        return _json(p.error_body(exc.code, exc.message, **exc.extra), exc.status)
    except p.ProtocolError as exc:
        return _json(p.error_body(p.BAD_REQUEST, str(exc)), 400)
    except ConnectionResetError:
        # The client left (an aborted upload or stream): nobody reads an answer.
        return web.Response(status=499, reason="Client Closed Request")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = p.NO_ROUTE if exc.status in (404, 405) else p.BAD_REQUEST
        return _json(
            p.error_body(code, f"{request.method} {request.path}: {exc.reason}"), exc.status
        )


async def health(request: web.Request) -> web.Response:
    agent = _agent(request)
    return _json(
        {"status": "ok", "api": p.API_VERSION, "pid": os.getpid(), "frozen": agent.freezer.frozen}
    )


async def init(request: web.Request) -> web.Response:
    agent = _agent(request)
    req = p.InitRequest.from_json(await _body(request))
    if req.user is not None:
        fs.owner_ids(req.user, None, None)  # refuse an unknown user now, not at the next exec
    agent.defaults = Defaults(env=req.env, user=req.user)
    thawed = await agent.blocking(agent.freezer.thaw)
    drift, stepped = 0, False
    if req.time_ns is not None:
        drift = req.time_ns - time.time_ns()
        if agent.set_clock and abs(drift) > CLOCK_TOLERANCE_NS:
            time.clock_settime_ns(time.CLOCK_REALTIME, req.time_ns)
            stepped = True
    return _json({"thawed": thawed, "drift_ns": drift, "clock_stepped": stepped})


async def _ndjson(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    return resp


async def _until_disconnect(request: web.Request, work: Awaitable[T]) -> T:
    """Run ``work``; cancel it when the client goes away.

    aiohttp 3.8 cancels the handler itself on disconnect; newer versions do not,
    and a silent command would never notice a write failing, so also watch the
    transport."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait([task], timeout=0.5)
            if done:
                return task.result()
            transport = request.transport
            if transport is None or transport.is_closing():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise ConnectionResetError("client went away")
    finally:
        task.cancel()


async def exec_(request: web.Request) -> web.StreamResponse:
    agent = _agent(request)
    spec = p.CommandSpec.from_json(await _body(request))
    proc = await spawn(spec, agent.defaults, agent.root)
    job = Job(proc, spec)
    try:
        resp = await _ndjson(request)
    except BaseException:  # the client left before the stream began
        abandon(proc)
        raise

    async def emit(event: p.Event) -> None:
        await resp.write(p.event_line(event))

    await _until_disconnect(request, job.run(emit))
    await resp.write_eof()
    return resp


async def exec_session(request: web.Request) -> web.StreamResponse:
    agent = _agent(request)
    return await agent_session.session(request, agent.defaults, agent.root)


async def process_start(request: web.Request) -> web.Response:
    agent = _agent(request)
    spec = p.CommandSpec.from_json(await _body(request))
    bg = await agent.procs.start(spec, agent.defaults, agent.root)
    return _json(bg.info().to_json(), 201)


async def process_list(request: web.Request) -> web.Response:
    procs = _agent(request).procs.procs.values()
    return _json({"processes": [bg.info().to_json() for bg in procs]})


async def process_info(request: web.Request) -> web.Response:
    return _json(_agent(request).procs.get(request.match_info["id"]).info().to_json())


async def process_signal(request: web.Request) -> web.Response:
    body = await _body(request)
    group = p.bool_field(body, "group", True)
    _agent(request).procs.signal(request.match_info["id"], p.signal_field(body), group)
    return _json({"ok": True})


async def process_forget(request: web.Request) -> web.Response:
    _agent(request).procs.forget(request.match_info["id"])
    return _json({"ok": True})


async def process_output(request: web.Request) -> web.StreamResponse:
    bg = _agent(request).procs.get(request.match_info["id"])
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        raise p.ProtocolError("query 'since': expected an integer") from None
    follow = request.query.get("follow", "1") not in ("0", "false", "no")
    resp = await _ndjson(request)

    async def emit(event: p.Event) -> None:
        await resp.write(p.event_line(event))

    await _until_disconnect(request, bg.follow(since, emit, follow))
    await resp.write_eof()
    return resp


async def file_read(request: web.Request) -> web.StreamResponse:
    agent = _agent(request)
    f, size = await agent.blocking(fs.open_for_read, agent.root, _query_path(request))
    try:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = size
        await resp.prepare(request)
        remaining = size
        while remaining > 0:
            chunk = await agent.blocking(f.read, min(FILE_CHUNK, remaining))
            if not chunk:
                break  # the file shrank: the short body tells the client
            await resp.write(chunk)
            remaining -= len(chunk)
    finally:
        f.close()
    await resp.write_eof()
    return resp


def _query_int(request: web.Request, key: str, base: int = 10) -> int | None:
    text = request.query.get(key)
    try:
        return None if text is None else int(text, base)
    except ValueError:
        raise p.ProtocolError(f"query {key!r}: {text!r} is not a base-{base} integer") from None


async def file_write(request: web.Request) -> web.Response:
    agent = _agent(request)
    path = _query_path(request)
    mode = p.mode_field({"mode": _query_int(request, "mode", 8)})
    owner = fs.owner_ids(
        request.query.get("user"), _query_int(request, "uid"), _query_int(request, "gid")
    )
    writer = await agent.blocking(fs.AtomicWriter, agent.root, path, mode, owner)
    try:
        async for chunk in request.content.iter_chunked(FILE_CHUNK):
            await agent.blocking(writer.write, chunk)
    except BaseException:
        await agent.blocking(writer.abort)
        raise
    await agent.blocking(writer.commit)
    info = await agent.blocking(fs.stat_path, agent.root, path)
    return _json(info.to_json())


async def file_stat(request: web.Request) -> web.Response:
    agent = _agent(request)
    info = await agent.blocking(fs.stat_path, agent.root, _query_path(request))
    return _json(info.to_json())


async def file_list(request: web.Request) -> web.Response:
    agent = _agent(request)
    entries = await agent.blocking(fs.list_dir, agent.root, _query_path(request))
    return _json({"entries": [e.to_json() for e in entries]})


async def file_mkdir(request: web.Request) -> web.Response:
    agent = _agent(request)
    body = await _body(request)
    path = p.path_field(body)
    mode = p.mode_field(body)
    owner = fs.owner_ids(body.get("user"), None, None) if body.get("user") else (-1, -1)
    parents = p.bool_field(body, "parents", True)
    created = await agent.blocking(
        fs.mkdir, agent.root, path, 0o755 if mode is None else mode, parents, owner
    )
    return _json({"created": created})


async def file_remove(request: web.Request) -> web.Response:
    agent = _agent(request)
    body = await _body(request)
    path = p.path_field(body)
    await agent.blocking(fs.remove, agent.root, path, p.bool_field(body, "recursive", False))
    return _json({"ok": True})


async def snapshot_prepare(request: web.Request) -> web.Response:
    """Sync and freeze within ``deadline`` seconds, or answer that it could not: a guest
    whose writers keep sync busy must not hold the host's pause beyond its own deadline."""
    agent = _agent(request)
    body = await _body(request)
    thaw_after = p.float_field(body, "thaw_after") or DEFAULT_THAW_AFTER
    deadline = p.float_field(body, "deadline") or DEFAULT_PREPARE_DEADLINE
    abandoned = threading.Event()
    work = asyncio.ensure_future(agent.blocking(agent.freezer.freeze, thaw_after, abandoned))
    done, _ = await asyncio.wait([work], timeout=deadline)
    if not done:
        abandoned.set()
        work.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
        raise fs.AgentError(p.CONFLICT, f"sync and freeze did not finish within {deadline} s")
    work.result()
    return _json({"frozen": True, "thaw_after": thaw_after})


async def snapshot_thaw(request: web.Request) -> web.Response:
    agent = _agent(request)
    return _json({"thawed": await agent.blocking(agent.freezer.thaw)})


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all cpus from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0]) * 1024
    return out


def _sample(root: str) -> tuple[tuple[int, int], dict[str, int], os.statvfs_result, float]:
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return _cpu_times(), _meminfo(), os.statvfs(root), uptime


async def metrics(request: web.Request) -> web.Response:
    agent = _agent(request)
    (busy, total), mem, disk, uptime = await agent.blocking(_sample, agent.root.path)
    last_busy, last_total = agent.cpu_sample
    agent.cpu_sample = (busy, total)
    percent = 100.0 * (busy - last_busy) / (total - last_total) if total > last_total else 0.0
    m = p.Metrics(
        cpu_count=os.cpu_count() or 1,
        cpu_percent=round(percent, 2),
        load1=os.getloadavg()[0],
        uptime=uptime,
        mem_total=mem.get("MemTotal", 0),
        mem_available=mem.get("MemAvailable", 0),
        disk_total=disk.f_blocks * disk.f_frsize,
        disk_free=disk.f_bavail * disk.f_frsize,
    )
    return _json(m.to_json())


def make_app(agent: Agent) -> web.Application:
    app = web.Application(middlewares=[errors], client_max_size=MAX_JSON_BODY)
    app[AGENT] = agent
    app.router.add_get("/health", health)
    app.router.add_post("/init", init)
    app.router.add_post("/exec", exec_)
    app.router.add_get("/exec/session", exec_session)
    app.router.add_post("/processes", process_start)
    app.router.add_get("/processes", process_list)
    app.router.add_get("/processes/{id}", process_info)
    app.router.add_delete("/processes/{id}", process_forget)
    app.router.add_post("/processes/{id}/signal", process_signal)
    app.router.add_get("/processes/{id}/output", process_output)
    app.router.add_get("/files", file_read)
    app.router.add_put("/files", file_write)
    app.router.add_get("/files/stat", file_stat)
    app.router.add_get("/files/list", file_list)
    app.router.add_post("/files/mkdir", file_mkdir)
    app.router.add_post("/files/remove", file_remove)
    app.router.add_post("/snapshot/prepare", snapshot_prepare)
    app.router.add_post("/snapshot/thaw", snapshot_thaw)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(args: argparse.Namespace) -> None:
    agent = Agent(args.root, set_clock=not args.no_set_clock, keep_output=args.keep_output)
    # Header limits are explicit: an oversized request line or header gets a 400.
    runner = web.AppRunner(
        make_app(agent), access_log=None, max_line_size=8190, max_field_size=8190
    )
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = runner.addresses[0][1]
    print(json.dumps({"listening": [args.host, port], "pid": os.getpid()}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await agent.procs.close()
        await agent.blocking(agent.freezer.thaw)
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="wrenn-agent", description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=p.AGENT_PORT)
    parser.add_argument("--root", default="/", help="directory all paths are relative to")
    parser.add_argument(
        "--no-set-clock", action="store_true", help="never step the wall clock (tests on a host)"
    )
    parser.add_argument("--keep-output", type=int, default=1 << 20, metavar="BYTES")
    args = parser.parse_args(argv)
    # Nothing may write bytecode while the root filesystem is frozen.
    sys.dont_write_bytecode = True
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
