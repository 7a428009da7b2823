"""``wrennctl sandbox shell ID``: an interactive shell on a terminal in the sandbox.

The local terminal is put in raw mode; keystrokes go to ``sandbox.exec.input``
as they are typed, window size changes to ``sandbox.exec.resize``, and the
remote terminal's output is written as it comes.  The shell's exit status is
wrennctl's.  Without a local terminal, stdin is still streamed (no raw mode).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import shutil
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from typing import Any, TextIO

from wrennd.rpc.client import Client


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", help="sandbox id (sb-...)")
    p.add_argument("--shell", default="/bin/bash", help="the program to run (default /bin/bash)")
    p.add_argument("--user", help="run as this guest user")


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSADRAIN)  # TCSAFLUSH would drop what was typed ahead
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def run(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> Any:
    loop = asyncio.get_running_loop()
    session: asyncio.Future[str] = loop.create_future()
    stdin_fd = sys.stdin.fileno()
    write = out.buffer.write if hasattr(out, "buffer") else None

    def on_note(method: str, params: dict[str, Any]) -> None:
        if method == "started" and not session.done():
            session.set_result(str(params["session"]))
        elif method == "stream":
            data = base64.b64decode(params["data"])
            if write is not None:
                write(data)
                out.flush()
            else:
                out.write(data.decode("utf-8", "replace"))

    cols, rows = shutil.get_terminal_size()
    params: dict[str, Any] = {
        "id": args.id,
        "argv": [args.shell, "-l"] if args.shell.endswith("sh") else [args.shell],
        "pty": True,
        "rows": rows,
        "cols": cols,
    }
    if args.user:
        params["user"] = args.user
    call = asyncio.ensure_future(client.call("sandbox.exec", params, on_notification=on_note))
    started = asyncio.ensure_future(asyncio.shield(session))
    await asyncio.wait([call, started], return_when=asyncio.FIRST_COMPLETED)
    if not session.done():
        return await call  # refused before it started: the call's error says why
    token = session.result()
    inbox: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(stdin_fd, 65536)
        except OSError:
            data = b""
        inbox.put_nowait(data)
        if not data:
            loop.remove_reader(stdin_fd)

    async def feed() -> None:
        while data := await inbox.get():
            note = {"session": token, "data": base64.b64encode(data).decode()}
            await client.call("sandbox.exec.input", note)
        await client.call("sandbox.exec.input", {"session": token, "eof": True})

    resizes: set[asyncio.Future[Any]] = set()

    def resized() -> None:
        c, r = shutil.get_terminal_size()
        size = {"session": token, "rows": r, "cols": c}
        task = asyncio.ensure_future(client.call("sandbox.exec.resize", size))
        resizes.add(task)
        task.add_done_callback(resizes.discard)

    with _raw(stdin_fd):
        loop.add_reader(stdin_fd, readable)
        loop.add_signal_handler(signal.SIGWINCH, resized)
        feeder = asyncio.ensure_future(feed())
        try:
            return await call
        finally:
            loop.remove_signal_handler(signal.SIGWINCH)
            loop.remove_reader(stdin_fd)
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
