"""Guest agent, processes: spawn commands, stream their output, keep background ones.

Runs inside the guest: standard library and wrennd.guest.protocol only.  Every
command runs in its own session (process group = its pid) so a timeout, a
signal or a vanished client reaches everything it started.
"""

# Paths arrive as strings from the wire and are resolved under the agent root as
# strings; pathlib would only wrap and unwrap them.

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import pwd
import secrets
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from wrennd.guest import protocol as p
from wrennd.guest.agent_fs import AgentError, Root, os_error

CHUNK = 64 * 1024
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KILL_GRACE = 1.0  # seconds to drain pipes after a kill before giving up on them

Emit = Callable[[p.Event], Awaitable[None]]


@dataclass
class Defaults:
    """Environment and user set by POST /init, applied under each command's own."""

    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None


def spawn_args(spec: p.CommandSpec, defaults: Defaults, root: Root) -> dict[str, Any]:
    user = spec.user or defaults.user
    try:
        pw = pwd.getpwnam(user) if user else pwd.getpwuid(os.getuid())
    except KeyError:
        raise AgentError(p.NO_USER, f"no such user {user!r}", user=user) from None
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": pw.pw_dir,
        "USER": pw.pw_name,
        "LOGNAME": pw.pw_name,
        "SHELL": pw.pw_shell or "/bin/sh",
    }
    env.update(defaults.env)
    env.update(spec.env)
    if spec.cwd is not None:
        cwd = root.resolve(spec.cwd)
        if not os.path.isdir(cwd):
            code = p.ENOTDIR if os.path.exists(cwd) else p.ENOENT
            raise AgentError(code, f"working directory {spec.cwd}: not a directory", path=spec.cwd)
    else:
        home = root.resolve(pw.pw_dir)
        cwd = home if os.path.isdir(home) else root.resolve("/")
    args: dict[str, Any] = {"cwd": cwd, "env": env, "start_new_session": True}
    if user and pw.pw_uid != os.getuid():
        args.update(
            user=pw.pw_uid,
            group=pw.pw_gid,
            extra_groups=os.getgrouplist(pw.pw_name, pw.pw_gid),
        )
    return args


async def spawn(spec: p.CommandSpec, defaults: Defaults, root: Root) -> asyncio.subprocess.Process:
    argv = spec.command()
    args = spawn_args(spec, defaults, root)
    stdin = asyncio.subprocess.PIPE if spec.stdin else asyncio.subprocess.DEVNULL
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=stdin,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            **args,
        )
    except OSError as exc:
        raise os_error(exc, argv[0]) from None


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def exit_event(returncode: int, timed_out: bool = False) -> p.Exited:
    if returncode < 0:
        return p.Exited(None, -returncode, timed_out)
    return p.Exited(returncode, None, timed_out)


class Job:
    """One spawned command: feeds stdin, pumps its output into ``emit``, reports its exit."""

    def __init__(self, proc: asyncio.subprocess.Process, spec: p.CommandSpec) -> None:
        self.proc = proc
        self.spec = spec
        self.seq = 0
        self._lock = asyncio.Lock()

    async def _emit(self, emit: Emit, event: p.Event) -> None:
        async with self._lock:  # one writer at a time: streams interleave by chunk
            await emit(event)

    async def _pump(self, stream: asyncio.StreamReader | None, name: str, emit: Emit) -> None:
        assert stream is not None
        while chunk := await stream.read(CHUNK):
            self.seq += 1
            await self._emit(emit, p.Output(name, chunk, self.seq))

    async def _feed(self) -> None:
        stdin = self.proc.stdin
        if stdin is None:
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.write(self.spec.stdin or b"")
            await stdin.drain()
        stdin.close()

    async def run(self, emit: Emit, ident: str | None = None) -> p.Exited:
        """Stream the command to completion; kills its group if cancelled or timed out.

        Ends when stdout and stderr close and the command exited: a daemon that
        keeps them open keeps the stream open (until the timeout)."""
        pumps: list[asyncio.Future[None]] = []
        timed_out = False
        try:
            await self._emit(emit, p.Started(self.proc.pid, ident))
            pumps = [
                asyncio.ensure_future(self._pump(self.proc.stdout, "stdout", emit)),
                asyncio.ensure_future(self._pump(self.proc.stderr, "stderr", emit)),
                asyncio.ensure_future(self._feed()),
            ]
            done, pending = await asyncio.wait(
                pumps, timeout=self.spec.timeout, return_when=asyncio.FIRST_EXCEPTION
            )
            for task in done:
                if (exc := task.exception()) is not None:
                    raise exc
            if pending:
                timed_out = True
                kill_group(self.proc.pid)
                await asyncio.wait(pending, timeout=KILL_GRACE)
            returncode = await self.proc.wait()
        except BaseException:
            abandon(self.proc)
            raise
        finally:
            for task in pumps:
                task.cancel()
        event = exit_event(returncode, timed_out)
        await self._emit(emit, event)
        return event


_reapers: set[asyncio.Task[int]] = set()


def abandon(proc: asyncio.subprocess.Process) -> None:
    """Kill a command nobody will stream, and reap it."""
    kill_group(proc.pid)
    _reap_later(proc)


def _reap_later(proc: asyncio.subprocess.Process) -> None:
    """Wait for a killed process off the cancelled path so it never stays a zombie."""
    task = asyncio.ensure_future(proc.wait())
    _reapers.add(task)
    task.add_done_callback(_reapers.discard)


class Background:
    """A command that outlives its HTTP request; keeps recent output for (re)attaching clients."""

    def __init__(self, ident: str, job: Job, keep_bytes: int) -> None:
        self.id = ident
        self.job = job
        self.started_at = time.time()
        self.keep_bytes = keep_bytes
        self.log: collections.deque[p.Output] = collections.deque()
        self.log_bytes = 0
        self.exit: p.Exited | None = None
        self.changed = asyncio.Condition()
        self.task: asyncio.Task[p.Exited] | None = None

    async def record(self, event: p.Event) -> None:
        async with self.changed:
            if isinstance(event, p.Output):
                self.log.append(event)
                self.log_bytes += len(event.data)
                while self.log_bytes > self.keep_bytes and len(self.log) > 1:
                    self.log_bytes -= len(self.log.popleft().data)
            elif isinstance(event, p.Exited):
                self.exit = event
            self.changed.notify_all()

    def info(self) -> p.ProcessInfo:
        done = self.exit
        return p.ProcessInfo(
            id=self.id,
            pid=self.job.proc.pid,
            command=self.job.spec.command(),
            running=done is None,
            code=done.code if done else None,
            signal=done.signal if done else None,
            started_at=self.started_at,
        )

    async def follow(self, since: int, emit: Emit, wait: bool) -> None:
        """Emit retained output with seq >= since, then live output until the exit."""
        await emit(p.Started(self.job.proc.pid, self.id))
        nxt = max(since, 1)
        while True:
            async with self.changed:
                if wait and self.exit is None and (not self.log or self.log[-1].seq < nxt):
                    await self.changed.wait()
                    continue
                items = [e for e in self.log if e.seq >= nxt]
                oldest = self.log[0].seq if self.log else self.job.seq + 1
                done = self.exit
            if nxt < oldest:
                await emit(p.Lost(oldest - nxt))
            for item in items:
                await emit(item)
            nxt = max(nxt, oldest, items[-1].seq + 1 if items else 0)
            if done is not None or not wait:
                if done is not None:
                    await emit(done)
                return


class ProcessTable:
    """Background processes by id; they survive the request that started them."""

    def __init__(self, keep_bytes: int = 1 << 20) -> None:
        self.keep_bytes = keep_bytes
        self.procs: dict[str, Background] = {}

    async def start(self, spec: p.CommandSpec, defaults: Defaults, root: Root) -> Background:
        proc = await spawn(spec, defaults, root)
        bg = Background(secrets.token_hex(6), Job(proc, spec), self.keep_bytes)
        self.procs[bg.id] = bg
        bg.task = asyncio.ensure_future(bg.job.run(bg.record, bg.id))
        return bg

    def get(self, ident: str) -> Background:
        try:
            return self.procs[ident]
        except KeyError:
            raise AgentError(p.NO_PROCESS, f"process {ident!r} not found", id=ident) from None

    def signal(self, ident: str, sig: int, group: bool) -> None:
        bg = self.get(ident)
        if bg.exit is not None:
            raise AgentError(p.CONFLICT, f"process {ident!r} has already exited", id=ident)
        try:
            (os.killpg if group else os.kill)(bg.job.proc.pid, sig)
        except ProcessLookupError:
            raise AgentError(p.NO_PROCESS, f"process {ident!r} is gone", id=ident) from None

    def forget(self, ident: str) -> None:
        bg = self.get(ident)
        if bg.exit is None:
            raise AgentError(p.CONFLICT, f"process {ident!r} is still running", id=ident)
        del self.procs[ident]

    async def close(self) -> None:
        for bg in self.procs.values():
            if bg.exit is None:
                kill_group(bg.job.proc.pid)
        tasks = [bg.task for bg in self.procs.values() if bg.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=KILL_GRACE + 1)
