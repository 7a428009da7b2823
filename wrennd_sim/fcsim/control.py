"""fcsim's control socket: play the guest's memory accesses for tests and benchmarks.

One JSON object per line in each direction. Requests: ``{"op": ...}`` with
- ``info``: state, memory size, page size, backend, dirty page count;
- ``write`` (offset, data: base64) and ``read`` (offset, length);
- ``checksum``: sha256 of the whole guest memory;
- ``dirty`` (fraction, seed): write seed-derived bytes into that fraction of pages;
- ``discard`` (offset, length): madvise(MADV_DONTNEED) whole pages, as a balloon
  inflation (the UFFD handler gets a REMOVE);
- ``touch`` (count, order: sequential|random|strided, arg: the random seed or the
  stride, write): touch pages once each with the native toucher; answers pages,
  seconds and the p50/p99/max latency of one touch in ns.
Answers: ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.

Writes and touches are the guest running, so they need the VM Running;
reads and checksums work in any state once memory exists. Every memory
access runs in a worker thread: on the Uffd backend it may wait for the
page-fault handler.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

from wrennd_sim.fcsim.machine import Machine, VmState
from wrennd_sim.fcsim.memory import GuestMemory, GuestMemoryError

MAX_LINE = 16 * 1024 * 1024


class ControlError(ValueError):
    pass


def _int(req: dict[str, Any], key: str, default: int | None = None) -> int:
    value = req.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ControlError(f"{key}: expected an integer, got {value!r}")
    return value


class ControlServer:
    def __init__(self, machine: Machine, path: Path) -> None:
        self.machine = machine
        self.path = path
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._client, str(self.path), limit=MAX_LINE)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict):
                        raise ControlError("expected a JSON object")
                    answer = {"ok": True, **await self._op(req)}
                except (ControlError, GuestMemoryError, json.JSONDecodeError) as e:
                    answer = {"ok": False, "error": str(e)}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _memory(self, running: bool) -> GuestMemory:
        m = self.machine
        if m.memory is None:
            raise ControlError("the microVM has no memory yet (not started or loaded)")
        if running and m.state is not VmState.RUNNING:
            raise ControlError(f"the guest is not running (state {m.state.value})")
        return m.memory

    async def _op(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        async with self.machine.lock:
            if op == "info":
                return self._info()
            if op == "checksum":
                mem = self._memory(running=False)
                return {"sha256": await asyncio.to_thread(mem.checksum)}
            if op == "read":
                mem = self._memory(running=False)
                data = await asyncio.to_thread(mem.read, _int(req, "offset"), _int(req, "length"))
                return {"data": base64.b64encode(data).decode()}
            if op == "write":
                mem = self._memory(running=True)
                try:
                    data = base64.b64decode(req.get("data", ""), validate=True)
                except (binascii.Error, TypeError) as e:
                    raise ControlError(f"data: expected base64: {e}") from e
                await asyncio.to_thread(mem.write, _int(req, "offset"), data)
                return {"written": len(data)}
            if op == "discard":
                mem = self._memory(running=True)
                offset, length = _int(req, "offset"), _int(req, "length")
                await asyncio.to_thread(mem.discard, offset, length)
                return {"discarded": length}
            if op == "dirty":
                mem = self._memory(running=True)
                fraction = req.get("fraction")
                if not isinstance(fraction, int | float) or isinstance(fraction, bool):
                    raise ControlError(f"fraction: expected a number, got {fraction!r}")
                pages = await asyncio.to_thread(
                    mem.dirty_fraction, float(fraction), _int(req, "seed", 0)
                )
                return {"pages": pages}
            if op == "touch":
                mem = self._memory(running=True)
                result = await asyncio.to_thread(
                    mem.touch,
                    _int(req, "count"),
                    str(req.get("order", "sequential")),
                    _int(req, "arg", 0),
                    bool(req.get("write", False)),
                )
                return dataclasses.asdict(result)
        raise ControlError(f"unknown op {op!r}")

    def _info(self) -> dict[str, Any]:
        m = self.machine
        mem = m.memory
        return {
            "state": m.state.value,
            "mem_size": mem.size if mem else None,
            "page_size": mem.page_size if mem else None,
            "backend": mem.backend if mem else None,
            "track_dirty_pages": mem.track_dirty if mem else None,
            "dirty_pages": mem.dirty_count() if mem else 0,
        }


class ControlClient:
    """Client side of the control socket, for tests and benchmarks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        if self._conn is None:
            self._conn = await asyncio.open_unix_connection(str(self.path), limit=MAX_LINE)
        reader, writer = self._conn
        writer.write(json.dumps({"op": op, **args}).encode() + b"\n")
        await writer.drain()
        line = await reader.readline()
        if not line:
            raise ConnectionError(f"control socket {self.path} closed")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise ControlError(f"{op}: {answer.get('error')}")
        return answer

    async def checksum(self) -> str:
        return str((await self.call("checksum"))["sha256"])

    async def close(self) -> None:
        if self._conn is not None:
            writer = self._conn[1]
            self._conn = None
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
