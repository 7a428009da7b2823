"""``sandbox.exec`` and its interactive companions: byte-exact output, streamed stdin, PTYs.

Output is bytes: ``stdout``/``stderr`` (in a result or a ``stream``
notification) are base64 unless the call asks for ``"encoding": "text"``
(UTF-8, invalid bytes replaced).  With ``interactive`` or ``pty`` the call
first sends a ``started`` notification naming a ``session``; while the call
runs, ``sandbox.exec.input`` feeds its stdin (flow control: each answer comes
once the agent took the bytes), ``sandbox.exec.resize`` sizes its terminal and
``sandbox.exec.signal`` signals its process group.  The session ends with the
call; a client that goes away takes its command with it.
"""

from __future__ import annotations

import base64
import math
import secrets
from typing import Any

from wrennd.rpc import errors as rpc
from wrennd.rpc.methods import CallContext, MethodTable
from wrennd.rpc.schemas import ID, PATH, STR_MAP, obj, translated
from wrennd.sandbox import (
    CommandSpec,
    Exited,
    GuestSession,
    Output,
    ProtocolError,
    SandboxService,
    Started,
    b64decode,
)

ENCODING = {"enum": ["base64", "text"], "description": "how output bytes are carried"}
_SIZE = {"type": "integer", "minimum": 1, "maximum": 1000}
EXEC = {
    **obj(
        ["id"],
        id=ID,
        argv={"type": "array", "items": {"type": "string"}, "minItems": 1},
        shell={"type": "string"},
        env=STR_MAP,
        cwd=PATH,
        user={"type": "string"},
        stdin={"type": "string", "description": "base64, written then closed"},
        timeout={"type": "number", "exclusiveMinimum": 0},
        stream={"type": "boolean", "description": "output as stream notifications"},
        encoding=ENCODING,
        interactive={"type": "boolean", "description": "stdin through sandbox.exec.input"},
        pty={"type": "boolean", "description": "run on a pseudo-terminal (implies interactive)"},
        rows=_SIZE,
        cols=_SIZE,
    ),
    "oneOf": [{"required": ["argv"]}, {"required": ["shell"]}],
}
_SESSION = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
INPUT = obj(
    ["session"],
    session=_SESSION,
    data={"type": "string", "description": "base64"},
    eof={"type": "boolean"},
)
RESIZE = obj(["session", "rows", "cols"], session=_SESSION, rows=_SIZE, cols=_SIZE)
SESSION_SIGNAL = obj(
    ["session", "signal"], session=_SESSION, signal={"type": ["integer", "string"]}
)

# The command fields of sandbox.exec and sandbox.process.start are CommandSpec's wire shape:
# one decoder (the guest protocol's) reads them on both sides of the agent.
_SPEC_FIELDS = ("argv", "shell", "env", "cwd", "user", "stdin", "timeout")


def spec(params: dict[str, Any]) -> CommandSpec:
    try:
        return CommandSpec.from_json({k: params[k] for k in _SPEC_FIELDS if k in params})
    except ProtocolError as e:
        raise rpc.InvalidParams(str(e), errors=[{"path": "", "message": str(e)}]) from e


def encode(data: bytes, encoding: str) -> str:
    if encoding == "text":
        return data.decode("utf-8", "replace")
    return base64.b64encode(data).decode("ascii")


def b64(text: str, field: str) -> bytes:
    try:
        return b64decode(text, field)
    except ProtocolError as e:
        raise rpc.InvalidParams(str(e), errors=[{"path": f"/{field}", "message": str(e)}]) from e


def _exit(pid: int, exited: Exited | None) -> dict[str, Any]:
    if exited is None:
        raise rpc.GuestFailure("the command's output ended without its exit status")
    return {"pid": pid, "code": exited.code, "signal": exited.signal, "timed_out": exited.timed_out}


async def _streamed(
    service: SandboxService, ctx: CallContext, p: dict[str, Any], encoding: str
) -> dict[str, Any]:
    pid, exited = 0, None
    command = spec(p)
    async with service.guest(p["id"], service.command_deadline(command)) as guest:
        events = guest.exec(command)
        try:
            async for event in events:
                if isinstance(event, Output):
                    data = encode(event.data, encoding)
                    await ctx.notify("stream", {"stream": event.stream, "data": data})
                elif isinstance(event, Started):
                    pid = event.pid
                elif isinstance(event, Exited):
                    exited = event
        finally:
            # Leaving early drops the connection: the agent kills the command.
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()
    return {**_exit(pid, exited), "encoding": encoding}


class Sessions:
    """Interactive exec calls in flight, by session token."""

    def __init__(self) -> None:
        self.live: dict[str, GuestSession] = {}

    def get(self, token: str) -> GuestSession:
        try:
            return self.live[token]
        except KeyError:
            raise rpc.NotFound("no such exec session (it ended?)", session=token) from None

    async def run(
        self, service: SandboxService, ctx: CallContext, p: dict[str, Any], encoding: str
    ) -> dict[str, Any]:
        pty = bool(p.get("pty"))
        command = spec(p)
        pid, exited = 0, None
        # An interactive session lasts as long as its user: no deadline (a pause or
        # destroy still ends it, and a stopped VMM).
        async with service.guest(p["id"], math.inf) as guest:
            sess = await guest.session(
                command, pty=pty, rows=p.get("rows", 24), cols=p.get("cols", 80)
            )
            token = secrets.token_hex(16)
            self.live[token] = sess
            try:
                async for event in sess.events():
                    if isinstance(event, Output):
                        data = encode(event.data, encoding)
                        await ctx.notify("stream", {"stream": event.stream, "data": data})
                    elif isinstance(event, Started):
                        pid = event.pid
                        await ctx.notify("started", {"session": token, "pid": pid, "pty": pty})
                    elif isinstance(event, Exited):
                        exited = event
            finally:
                del self.live[token]
                await sess.close()
        return {**_exit(pid, exited), "encoding": encoding}


def register(methods: MethodTable, service: SandboxService) -> None:
    sessions = Sessions()

    @methods.register("sandbox.exec", params=EXEC, mutating=True)
    async def exec_(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Run a command in the sandbox and answer with its exit status (and output)."""
        encoding = p.get("encoding", "base64")
        with translated():
            if p.get("interactive") or p.get("pty"):
                return await sessions.run(service, ctx, p, encoding)
            if p.get("stream"):
                return await _streamed(service, ctx, p, encoding)
            command = spec(p)
            async with service.guest(p["id"], service.command_deadline(command)) as guest:
                r = await guest.run(command)
        return {
            "pid": r.pid,
            "code": r.code,
            "signal": r.signal,
            "timed_out": r.timed_out,
            "encoding": encoding,
            "stdout": encode(r.stdout, encoding),
            "stderr": encode(r.stderr, encoding),
        }

    @methods.register("sandbox.exec.input", params=INPUT)
    async def input_(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Feed stdin of an interactive exec; ``eof`` closes it (^D on a terminal)."""
        sess = sessions.get(p["session"])
        if "data" in p:
            await sess.send(b64(p["data"], "data"))
        if p.get("eof"):
            await sess.eof()
        return {"ok": True}

    @methods.register("sandbox.exec.resize", params=RESIZE)
    async def resize(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Set the terminal size of a ``pty`` exec."""
        await sessions.get(p["session"]).resize(p["rows"], p["cols"])
        return {"ok": True}

    @methods.register("sandbox.exec.signal", params=SESSION_SIGNAL)
    async def signal(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Send a signal to an interactive exec's process group."""
        await sessions.get(p["session"]).signal(p["signal"])
        return {"ok": True}
