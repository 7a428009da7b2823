"""The JSON-RPC server: accepts connections on a listening Unix socket, owns lifecycle work.

Shutdown happens in steps the daemon drives within one deadline:
``stop_accepting`` -> ``stop_reads`` (read work ends with ShuttingDown answers;
new requests are refused the same way) -> ``wait_lifecycle`` (lifecycle work
runs to completion) -> ``close`` (answers flushed, connections closed).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from dataclasses import dataclass
from typing import Any

from wrennd.log import kv
from wrennd.rpc.connection import Connection
from wrennd.rpc.errors import ResourceExhausted, RpcError, ShuttingDown
from wrennd.rpc.methods import MethodTable
from wrennd.rpc.observe import Observer

log = logging.getLogger("wrennd.rpc")
BACKLOG = 4096


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 4 << 20
    max_inflight: int = 64  # calls per connection (also the largest batch)
    max_connections: int = 4096
    write_high_water: int = 256 << 10  # bytes a client may leave unread before it is paused


class RpcServer:
    def __init__(self, methods: MethodTable, limits: Limits | None = None) -> None:
        self.methods = methods
        self.limits = limits or Limits()
        self.connections: set[Connection] = set()
        self.shutting_down = False
        self.counters: Counter[str] = Counter()
        self.observers: list[Observer] = []  # told of every finished call (metrics)
        self._reads: set[asyncio.Task[Any]] = set()  # read calls of other transports (HTTP)
        self._lifecycle: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._closed_all = asyncio.Event()

    async def serve(self, sock: socket.socket) -> None:
        """Accept connections on a bound AF_UNIX stream socket."""
        loop = asyncio.get_running_loop()
        # The loop calls listen() again with this backlog (its default, 100, is too short
        # for a burst of clients; the kernel caps it at net.core.somaxconn).
        self._server = await loop.create_unix_server(
            lambda: Connection(self), sock=sock, backlog=BACKLOG
        )

    # -- connection bookkeeping (called by Connection) -----------------------

    def admit(self, conn: Connection) -> bool:
        if self.shutting_down or len(self.connections) >= self.limits.max_connections:
            self.counters["connections_refused"] += 1
            return False
        self.connections.add(conn)
        self._closed_all.clear()
        self.counters["connections_total"] += 1
        return True

    def refusal(self) -> RpcError:
        if self.shutting_down:
            return ShuttingDown()
        return ResourceExhausted(
            "Too many connections", resource="connections", limit=self.limits.max_connections
        )

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self._closed_all.set()

    def own_lifecycle(self, task: asyncio.Task[Any]) -> None:
        self._lifecycle.add(task)
        task.add_done_callback(self._lifecycle.discard)

    def own_read(self, task: asyncio.Task[Any]) -> None:
        """Read work of another transport: cancelled by ``stop_reads`` like the socket's."""
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    # -- shutdown ------------------------------------------------------------

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def stop_reads(self, grace: float) -> None:
        """Refuse new requests, cancel read work and wait for its answers to go out."""
        self.shutting_down = True
        pending = [t for conn in list(self.connections) for t in conn.cancel_reads()]
        for task in list(self._reads):
            task.cancel()
            pending.append(task)
        if pending:
            await asyncio.wait(pending, timeout=max(grace, 0.001))

    async def wait_lifecycle(self, grace: float) -> int:
        """Let lifecycle work finish; return how many calls still run after ``grace`` s."""
        if not self._lifecycle:
            return 0
        log.info("waiting for lifecycle calls", extra=kv(count=len(self._lifecycle)))
        _, pending = await asyncio.wait(list(self._lifecycle), timeout=max(grace, 0.001))
        return len(pending)

    async def close(self, grace: float) -> None:
        """Close every connection, flushing answers; abort the ones that do not drain in time."""
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self.connections:
            try:
                await asyncio.wait_for(self._closed_all.wait(), max(grace, 0.001))
            except TimeoutError:
                for conn in list(self.connections):
                    if conn.transport is not None:
                        conn.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    # -- stats ---------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "connections": len(self.connections),
            "connections_total": self.counters["connections_total"],
            "connections_refused": self.counters["connections_refused"],
            "requests": self.counters["requests"],
            "notifications": self.counters["notifications"],
            "errors": self.counters["errors"],
            "messages_too_large": self.counters["messages_too_large"],
            "inflight": sum(c.inflight for c in self.connections),
            "lifecycle_running": len(self._lifecycle),
            "clients_not_reading": sum(1 for c in self.connections if c.writing_paused),
        }
