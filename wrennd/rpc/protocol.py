"""JSON-RPC 2.0 messages: decoding one line, checking a Request object, building responses.

Framing is one JSON text per line (UTF-8, ``\\n``-terminated).  Everything
here is pure: no I/O, no event loop, so the rules of the specification are
testable on their own.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from wrennd.rpc.errors import InvalidRequest, ParseError, RpcError

VERSION = "2.0"
RequestId = str | int | float | None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        # 1e400 parses to inf, which has no JSON spelling to send back.
        raise ValueError(f"number {text[:32]} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def decode(line: bytes) -> Any:
    """Parse one message; raise ParseError saying why it is not JSON we accept."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParseError(reason=f"not UTF-8 at byte {e.start}") from None
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise ParseError(reason="nesting too deep") from None
    except ValueError as e:
        # JSONDecodeError, NaN/Infinity, out-of-range floats, over-long integers.
        raise ParseError(reason=str(e)[:200]) from None


def encode(message: dict[str, Any]) -> bytes:
    """Compact ASCII JSON without the newline (ASCII keeps lone surrogates of echoed ids valid).

    Raises TypeError or ValueError when the message holds something JSON cannot carry.
    """
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


def is_valid_id(value: object) -> bool:
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    params: list[Any] | dict[str, Any] | None
    id: RequestId
    is_notification: bool


def parse_request(obj: object) -> Request:
    """Check one Request object; raise RequestError(InvalidRequest) with the id if it is known.

    Members other than jsonrpc/method/params/id are ignored, as the spec does not forbid them.
    """
    if not isinstance(obj, dict):
        raise _with_id(InvalidRequest(reason="a request must be a JSON object"), None)
    has_id = "id" in obj
    rid = obj.get("id")
    if has_id and not is_valid_id(rid):
        raise _with_id(InvalidRequest(reason="id must be a string, a number or null"), None)
    if obj.get("jsonrpc") != VERSION:
        raise _with_id(InvalidRequest(reason='jsonrpc must be exactly "2.0"'), rid)
    method = obj.get("method")
    if not isinstance(method, str):
        raise _with_id(InvalidRequest(reason="method must be a string"), rid)
    params = obj.get("params")
    if "params" in obj and not isinstance(params, list | dict):
        raise _with_id(InvalidRequest(reason="params must be an array or an object"), rid)
    return Request(method, params, rid, not has_id)


class RequestError(Exception):
    """An RpcError bound to the id of the request it answers."""

    def __init__(self, error: RpcError, request_id: RequestId) -> None:
        super().__init__(error.message)
        self.error = error
        self.request_id = request_id


def _with_id(error: RpcError, request_id: RequestId) -> RequestError:
    return RequestError(error, request_id)


def result_response(request_id: RequestId, result: Any) -> dict[str, Any]:
    return {"jsonrpc": VERSION, "result": result, "id": request_id}


def error_response(request_id: RequestId, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": VERSION, "error": error.to_json(), "id": request_id}


def notification(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": VERSION, "method": method, "params": params}
