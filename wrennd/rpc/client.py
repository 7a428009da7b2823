"""An asyncio JSON-RPC client for the daemon's socket (used by wrennctl, tests and benchmarks).

Calls may run concurrently on one connection; answers are matched by id.
Notifications the daemon sends for a call (progress, streamed output) carry
``params.request_id`` and go to that call's ``on_notification`` callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wrennd.rpc import protocol
from wrennd.rpc.client_channel import ChannelError, ChannelRefused, ClientChannel

NotificationHandler = Callable[[str, dict[str, Any]], None]
READ_LIMIT = 64 << 20


class ClientError(Exception):
    """The daemon could not be reached or the connection broke."""


class DaemonNotRunning(ClientError):
    pass


class PermissionDenied(ClientError):
    pass


class RemoteError(Exception):
    """The daemon answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message
        self.data = data if isinstance(data, dict) else {}

    @property
    def type(self) -> str:
        return str(self.data.get("type", ""))


async def open_socket(
    path: str | Path, limit: int = READ_LIMIT
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the daemon's socket, or the error that says why there is none."""
    try:
        return await asyncio.open_unix_connection(str(path), limit=limit)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise DaemonNotRunning(f"wrennd is not running (no one listens on {path})") from e
    except PermissionError as e:
        raise PermissionDenied(
            f"permission denied on {path}: join the socket's group (wrennd) or use root"
        ) from e
    except OSError as e:
        if e.errno == errno.ENOTSOCK:
            raise DaemonNotRunning(f"{path} is not a socket") from e
        raise ClientError(f"cannot connect to {path}: {e.strerror}") from e


class Client:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        path: Path | None = None,
    ) -> None:
        self.path = path  # the socket, for a second connection (a raw transfer channel)
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[Any, asyncio.Future[Any]] = {}
        self._listeners: dict[Any, NotificationHandler] = {}
        self._task = asyncio.ensure_future(self._read_loop())

    @classmethod
    async def connect(cls, path: str | Path) -> Client:
        reader, writer = await open_socket(path)
        return cls(reader, writer, Path(path))

    @classmethod
    async def connect_when_up(
        cls, path: str | Path, wait_s: float, alive: Callable[[], bool] | None = None
    ) -> Client:
        """Connect once the daemon answers ``host.info`` (it is starting or restarting).

        ``alive`` is asked before each try, so a daemon that died is reported at once
        rather than at the deadline."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            if alive is not None and not alive():
                raise DaemonNotRunning(f"the daemon behind {path} exited while starting")
            try:
                client = await cls.connect(path)
            except DaemonNotRunning:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)
                continue
            try:
                await client.call("host.info")
            except BaseException:
                await client.close()
                raise
            return client

    async def call(
        self,
        method: str,
        params: dict[str, Any] | list[Any] | None = None,
        on_notification: NotificationHandler | None = None,
    ) -> Any:
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        if on_notification is not None:
            self._listeners[rid] = on_notification
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": rid}
        if params is not None:
            message["params"] = params
        try:
            self._writer.write(protocol.encode(message) + b"\n")
            await self._writer.drain()
            return await future
        finally:
            self._pending.pop(rid, None)
            self._listeners.pop(rid, None)

    async def open_channel(self, transfer: str) -> ClientChannel:
        """A second connection upgraded to the raw channel of ``transfer`` (docs/api.md,
        "Files of any size"); ``.answer`` is the daemon's answer to the stream call."""
        if self.path is None:
            raise ClientError("this client has no socket path for a second connection")
        try:
            return await ClientChannel.open(self.path, transfer)
        except ChannelRefused as e:
            err = e.error
            raise RemoteError(err["code"], err["message"], err.get("data")) from None
        except ChannelError as e:
            raise ClientError(str(e)) from e

    async def _read_loop(self) -> None:
        error: Exception = ClientError("the daemon closed the connection")
        try:
            while line := await self._reader.readline():
                self._dispatch(json.loads(line))
        except (OSError, ValueError) as e:
            error = ClientError(f"connection to the daemon failed: {e}")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, list):
            for item in message:
                self._dispatch(item)
            return
        if not isinstance(message, dict):
            return
        if "method" in message:
            params = message.get("params")
            if isinstance(params, dict):
                listener = self._listeners.get(params.get("request_id"))
                if listener is not None:
                    listener(str(message["method"]), params)
            return
        future = self._pending.get(message.get("id"))
        if future is None or future.done():
            return
        if "error" in message:
            err = message["error"]
            future.set_exception(RemoteError(err["code"], err["message"], err.get("data")))
        else:
            future.set_result(message.get("result"))

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
