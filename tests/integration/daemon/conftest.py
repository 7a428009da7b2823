"""Fixtures for the daemon's tests: a real RpcServer on a real Unix socket, on uvloop.

The JSON-RPC 2.0 specification's demo methods (subtract, sum, update,
notify_hello, get_data) are registered here, for tests only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop

from wrennd.rpc.methods import CallContext, Kind, MethodTable
from wrennd.rpc.server import Limits, RpcServer

HERE = Path(__file__).parent
CHILD = HERE / "daemon_child.py"
NUMBER = {"type": "number"}


def pytest_asyncio_loop_factories() -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    # The daemon runs on uvloop: so do its tests.
    return {"uvloop": uvloop.new_event_loop}


@dataclass
class Demo:
    table: MethodTable = field(default_factory=MethodTable)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    # "wait" calls block until the test sets this: in flight for as long as it needs.
    gate: asyncio.Event = field(default_factory=asyncio.Event)


def demo_methods() -> Demo:
    demo = Demo()
    t = demo.table

    @t.register(
        "subtract",
        params={
            "type": "object",
            "properties": {"minuend": NUMBER, "subtrahend": NUMBER},
            "required": ["minuend", "subtrahend"],
            "additionalProperties": False,
        },
        positional=("minuend", "subtrahend"),
    )
    async def subtract(ctx: CallContext, p: dict[str, Any]) -> Any:
        return p["minuend"] - p["subtrahend"]

    @t.register(
        "sum",
        params={
            "type": "object",
            "properties": {"values": {"type": "array", "items": NUMBER}},
            "additionalProperties": False,
        },
        rest="values",
    )
    async def sum_(ctx: CallContext, p: dict[str, Any]) -> Any:
        return sum(p.get("values", []))

    @t.register("update", params={"type": "object"}, rest="values", mutating=True)
    async def update(ctx: CallContext, p: dict[str, Any]) -> None:
        demo.calls.append(("update", p))

    @t.register("notify_hello", params={"type": "object"}, positional=("value",))
    async def notify_hello(ctx: CallContext, p: dict[str, Any]) -> None:
        demo.calls.append(("notify_hello", p))

    @t.register("get_data")
    async def get_data(ctx: CallContext, p: dict[str, Any]) -> Any:
        return ["hello", 5]

    @t.register("ping")
    async def ping(ctx: CallContext, p: dict[str, Any]) -> str:
        return "pong"

    @t.register(
        "blob",
        params={"type": "object", "properties": {"size": {"type": "integer", "maximum": 1 << 24}}},
    )
    async def blob(ctx: CallContext, p: dict[str, Any]) -> str:
        return "x" * p.get("size", 0)

    @t.register(
        "sleep",
        params={"type": "object", "properties": {"seconds": NUMBER, "tag": {"type": "string"}}},
    )
    async def sleep_read(ctx: CallContext, p: dict[str, Any]) -> str:
        await ctx.progress(stage="started")
        try:
            await asyncio.sleep(p.get("seconds", 0))
        except asyncio.CancelledError:
            demo.calls.append(("sleep-cancelled", p.get("tag")))
            raise
        return "slept"

    @t.register("wait")
    async def wait(ctx: CallContext, p: dict[str, Any]) -> str:
        await demo.gate.wait()
        return "released"

    @t.register(
        "lifecycle.sleep",
        params={"type": "object", "properties": {"seconds": NUMBER, "tag": {"type": "string"}}},
        kind=Kind.LIFECYCLE,
        mutating=True,
    )
    async def sleep_lifecycle(ctx: CallContext, p: dict[str, Any]) -> str:
        await ctx.progress(stage="started")
        await asyncio.sleep(p.get("seconds", 0))
        sent = await ctx.progress(stage="finished")
        demo.calls.append(("lifecycle-finished", (p.get("tag"), sent, ctx.connected)))
        return "done"

    return demo


@pytest.fixture
def demo() -> Demo:
    return demo_methods()


Start = Callable[..., Any]


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[Start]:
    """``await start_server(table, **limits) -> (server, socket path)``; closed at teardown."""
    servers: list[RpcServer] = []

    async def start(table: MethodTable, **limits: Any) -> tuple[RpcServer, str]:
        path = str(tmp_path / f"rpc{len(servers)}.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(4096)
        sock.setblocking(False)
        server = RpcServer(table, Limits(**limits))
        await server.serve(sock)
        servers.append(server)
        return server, path

    yield start
    for server in servers:
        server.stop_accepting()
        await server.close(1.0)


class ThreadServer:
    """An RpcServer on its own uvloop in a thread, for synchronous (hypothesis) clients."""

    def __init__(self, table: MethodTable, path: str, limits: Limits) -> None:
        self.path = path
        self.loop = uvloop.new_event_loop()
        self.server = RpcServer(table, limits)
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("the server thread did not start")

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        sock.listen(128)
        sock.setblocking(False)
        self.loop.run_until_complete(self.server.serve(sock))
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def stop(self) -> None:
        async def close() -> None:
            self.server.stop_accepting()
            await self.server.close(1.0)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def thread_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    path = str(tmp_path_factory.mktemp("fuzz") / "rpc.sock")
    server = ThreadServer(demo_methods().table, path, Limits(max_message_bytes=64 << 10))
    yield server
    server.stop()


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str = "1", timeout: float = 15.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        for message in self.messages:
            if message.get(key) == value:
                return message
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                raw = self.sock.recv(4096)
            except TimeoutError:
                break
            message = dict(line.split("=", 1) for line in raw.decode().splitlines())
            self.messages.append(message)
            if message.get(key) == value:
                return message
        raise AssertionError(f"no {key}={value} from the daemon; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    socket_path: Path
    notify: NotifySocket
    marker_dir: Path

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode()


@pytest.fixture
def spawn_daemon(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    """Start ``daemon_child.py`` (wrennd plus test methods) as a real process."""
    children: list[Child] = []

    def spawn(
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        pass_fds: tuple[int, ...] = (),
        prefix: list[str] | None = None,
    ) -> Child:
        run = tmp_path / f"run{len(children)}"
        markers = tmp_path / f"markers{len(children)}"
        markers.mkdir()
        notify = NotifySocket(tmp_path / f"notify{len(children)}")
        full_env = {
            **os.environ,
            "WRENND_RUN_DIR": str(run),
            "WRENND_STATE_DIR": str(tmp_path / "state"),
            "WRENND_SOCKET_GROUP": "wrennd-test-no-such-group",
            "NOTIFY_SOCKET": notify.path,
            "TEST_MARKER_DIR": str(markers),
            **(env or {}),
        }
        cmd = [*(prefix or []), sys.executable, str(CHILD), *(args or [])]
        proc = subprocess.Popen(
            cmd, env=full_env, stderr=subprocess.PIPE, pass_fds=pass_fds, cwd=tmp_path
        )
        child = Child(proc, run / "wrennd.sock", notify, markers)
        children.append(child)
        return child

    yield spawn
    for child in children:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()
        if child.proc.stderr is not None:
            child.proc.stderr.close()
        child.notify.close()
