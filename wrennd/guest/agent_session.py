"""Guest agent, interactive commands: stdin streamed in, optionally on a pseudo-terminal.

``GET /exec/session`` upgrades to a WebSocket.  The client's first text
message is the command (a CommandSpec plus ``pty``, ``rows``, ``cols``); the
agent answers with the same events as ``POST /exec`` (start, stdout, stderr,
exit), one JSON text message each.  While the command runs the client sends
``{"type": "stdin", "data": b64}``, ``{"type": "eof"}``,
``{"type": "resize", "rows": R, "cols": C}`` and ``{"type": "signal",
"signal": "INT"}``.  With a PTY, stdout carries the terminal's output and
stderr is never sent.  Closing the socket kills the command's process group.

Runs inside the guest: standard library, aiohttp and the guest modules only.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import termios
from typing import Any

from aiohttp import WSMsgType, web

from wrennd.guest import protocol as p
from wrennd.guest.agent_fs import Root, os_error
from wrennd.guest.agent_proc import CHUNK, Defaults, abandon, exit_event, kill_group, spawn_args

DEFAULT_SIZE = (24, 80)


def _winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _size(obj: p.JSON) -> tuple[int, int]:
    rows = p.int_field(obj, "rows", DEFAULT_SIZE[0], 1, 1000)
    cols = p.int_field(obj, "cols", DEFAULT_SIZE[1], 1, 1000)
    return rows, cols


def _controlling_tty() -> None:
    # In the child, between fork and exec: a new session whose terminal is stdin.
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Session:
    """One interactive command and the pipes or terminal that connect it to a WebSocket."""

    def __init__(self, ws: web.WebSocketResponse, spec: p.CommandSpec, pty: bool) -> None:
        self.ws = ws
        self.spec = spec
        self.pty = pty
        self.master = -1
        self.proc: asyncio.subprocess.Process | None = None
        self.seq = 0
        self._send = asyncio.Lock()

    async def start(self, defaults: Defaults, root: Root, size: tuple[int, int]) -> None:
        argv = self.spec.command()
        args: dict[str, Any] = spawn_args(self.spec, defaults, root)
        try:
            if self.pty:
                self.master, slave = os.openpty()
                _winsize(slave, *size)
                args.pop("start_new_session", None)
                env = {"TERM": "xterm-256color", **args.pop("env")}
                try:
                    self.proc = await asyncio.create_subprocess_exec(
                        *argv,
                        stdin=slave,
                        stdout=slave,
                        stderr=slave,
                        preexec_fn=_controlling_tty,
                        env=env,
                        **args,
                    )
                finally:
                    os.close(slave)
            else:
                pipe = asyncio.subprocess.PIPE
                self.proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=pipe, stdout=pipe, stderr=pipe, **args
                )
        except OSError as exc:
            raise os_error(exc, argv[0]) from None

    async def emit(self, event: p.Event) -> None:
        async with self._send:
            await self.ws.send_str(p.event_line(event).decode())

    async def _pump_stream(self, stream: asyncio.StreamReader | None, name: str) -> None:
        assert stream is not None
        while chunk := await stream.read(CHUNK):
            self.seq += 1
            await self.emit(p.Output(name, chunk, self.seq))

    async def _pump_terminal(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=CHUNK)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(self.master), "rb", 0)
        )
        try:
            while True:
                try:
                    chunk = await reader.read(CHUNK)
                except OSError:  # EIO: every holder of the terminal's other side is gone
                    return
                if not chunk:
                    return
                self.seq += 1
                await self.emit(p.Output("stdout", chunk, self.seq))
        finally:
            transport.close()

    async def _write(self, data: bytes) -> None:
        assert self.proc is not None
        if self.pty:
            loop = asyncio.get_running_loop()
            view = memoryview(data)
            while view:
                n = await loop.run_in_executor(None, os.write, self.master, view)
                view = view[n:]
        elif self.proc.stdin is not None:
            self.proc.stdin.write(data)
            await self.proc.stdin.drain()

    async def _eof(self) -> None:
        assert self.proc is not None
        if self.pty:
            await self._write(b"\x04")  # ^D: end of input for a program reading the terminal
        elif self.proc.stdin is not None:
            self.proc.stdin.close()

    async def control(self, msg: p.JSON) -> None:
        """Apply one client message: stdin, eof, resize or signal."""
        assert self.proc is not None
        kind = p.get_str(msg, "type")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if kind == "stdin":
                await self._write(p.b64decode(p.get_str(msg, "data"), "data"))
            elif kind == "eof":
                await self._eof()
        if kind == "resize" and self.pty:
            _winsize(self.master, *_size(msg))
        elif kind == "signal":
            kill_group(self.proc.pid, p.signal_field(msg))
        elif kind not in ("stdin", "eof", "resize"):
            raise p.ProtocolError(f"unknown session message type {kind!r}")

    async def run(self) -> None:
        """Pump output and the client's messages until the command exits and output ends."""
        proc = self.proc
        assert proc is not None
        await self.emit(p.Started(proc.pid, None))
        if self.pty:
            pumps = [asyncio.ensure_future(self._pump_terminal())]
        else:
            pumps = [
                asyncio.ensure_future(self._pump_stream(proc.stdout, "stdout")),
                asyncio.ensure_future(self._pump_stream(proc.stderr, "stderr")),
            ]
        inbox = asyncio.ensure_future(self._inbox())
        try:
            done = asyncio.ensure_future(asyncio.gather(*pumps, proc.wait()))
            both: list[asyncio.Future[Any]] = [done, inbox]
            await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
            if not done.done():  # the client left: the command goes with it
                raise ConnectionResetError("client went away")
            await self.emit(exit_event(await proc.wait()))
        except BaseException:
            abandon(proc)
            raise
        finally:
            inbox.cancel()
            for task in pumps:
                task.cancel()
            if self.master >= 0:
                os.close(self.master)

    async def _inbox(self) -> None:
        async for msg in self.ws:
            if msg.type != WSMsgType.TEXT:
                return
            try:
                await self.control(p.parse_object(msg.data))
            except p.ProtocolError as exc:
                await self.ws.send_str(p.error_line(p.BAD_REQUEST, str(exc)))
                return


async def session(request: web.Request, defaults: Defaults, root: Root) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=4 * CHUNK * 4)
    await ws.prepare(request)
    first = await ws.receive()
    if first.type != WSMsgType.TEXT:
        await ws.close()
        return ws
    try:
        obj = p.parse_object(first.data)
        pty = p.bool_field(obj, "pty", False)
        size = _size(obj)
        spec = p.CommandSpec.from_json({k: v for k, v in obj.items() if k in p.SPEC_FIELDS})
        sess = Session(ws, spec, pty)
        await sess.start(defaults, root, size)
    except p.ProtocolError as exc:
        await ws.send_str(p.error_line(p.BAD_REQUEST, str(exc)))
        await ws.close()
        return ws
    except Exception as exc:  # AgentError: the spawn was refused
        code, message = getattr(exc, "code", p.EIO), getattr(exc, "message", str(exc))
        await ws.send_str(p.error_line(code, message, **getattr(exc, "extra", {})))
        await ws.close()
        return ws
    with contextlib.suppress(ConnectionResetError):
        await sess.run()
    await ws.close()
    return ws
