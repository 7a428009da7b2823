"""One JSON-RPC call, from whatever transport it came: parse, look up, bind, run, encode.

The Unix-socket connection frames lines and batches and enforces its limits;
what a single call is (its schema check, the peer log line of a mutating
call, the answer or error it gets, the counters it moves) is decided here, so
any other transport answers exactly as the socket does.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from wrennd.log import kv
from wrennd.rpc import protocol
from wrennd.rpc.errors import InternalError, RpcError, ShuttingDown
from wrennd.rpc.methods import CallContext, Kind, Method, MethodTable, PeerCred
from wrennd.rpc.observe import CallRecord, Observer, StageClock, TimedContext
from wrennd.rpc.protocol import Request, RequestError

log = logging.getLogger("wrennd.rpc")


class Host(Protocol):
    """What a call needs from the server that owns it."""

    methods: MethodTable
    counters: Counter[str]
    shutting_down: bool
    observers: list[Observer]


@dataclass(frozen=True, slots=True)
class Call:
    method: Method
    request: Request
    params: dict[str, Any]


def prepare(host: Host, item: object, peer: PeerCred) -> Call | bytes | None:
    """A call ready to run, or the encoded error it gets at once (None for a notification)."""
    counters = host.counters
    try:
        request = protocol.parse_request(item)
    except RequestError as e:
        counters["errors"] += 1
        return protocol.encode(protocol.error_response(e.request_id, e.error))
    counters["notifications" if request.is_notification else "requests"] += 1
    try:
        if host.shutting_down:
            raise ShuttingDown()
        method = host.methods.get(request.method)
        params = method.bind(request.params)
    except RpcError as e:
        if request.is_notification:
            return None
        counters["errors"] += 1
        if request.method in host.methods:  # a known method refused its params
            _observe(host, CallRecord(request.method, False, 0.0, e.code))
        return protocol.encode(protocol.error_response(request.id, e))
    if method.mutating:
        log.info(
            "rpc call",
            extra=kv(
                method=method.name,
                id=request.id,
                peer_pid=peer.pid,
                peer_uid=peer.uid,
                peer_gid=peer.gid,
            ),
        )
    return Call(method, request, params)


async def answer(host: Host, call: Call, context: CallContext) -> bytes | None:
    """Run the call; its encoded response (None for a notification)."""
    method, request = call.method, call.request
    clock = StageClock()
    if method.kind is Kind.LIFECYCLE:
        context = TimedContext(context, clock)
    try:
        result = await method.handler(context, call.params)
        response = protocol.result_response(request.id, result)
    except RpcError as e:
        response = protocol.error_response(request.id, e)
    except asyncio.CancelledError:
        if not (host.shutting_down and context.connected):
            raise
        # Read work stopped by the daemon's shutdown: tell the (still there) client why.
        response = protocol.error_response(request.id, ShuttingDown())
    except Exception as e:
        log.exception("rpc handler failed", extra=kv(method=method.name, id=request.id))
        response = protocol.error_response(request.id, InternalError(exception=repr(e)[:200]))
    seconds, stages = clock.finish()
    code = response["error"]["code"] if "error" in response else None
    _observe(host, CallRecord(method.name, method.kind is Kind.LIFECYCLE, seconds, code, stages))
    if request.is_notification:
        return None
    if "error" in response:
        host.counters["errors"] += 1
    try:
        return protocol.encode(response)
    except (TypeError, ValueError) as e:
        log.error("rpc result is not JSON", extra=kv(method=method.name, error=e))
        host.counters["errors"] += 1
        error = InternalError(reason="the result could not be encoded as JSON")
        return protocol.encode(protocol.error_response(request.id, error))


def _observe(host: Host, record: CallRecord) -> None:
    for observer in host.observers:
        try:
            observer(record)
        except Exception:
            log.exception("call observer failed", extra=kv(method=record.method))
