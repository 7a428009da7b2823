"""JSON-RPC message rules and the method table, without sockets."""

from __future__ import annotations

from typing import Any

import pytest

from wrennd.rpc import errors, protocol
from wrennd.rpc.methods import CallContext, Kind, Method, MethodTable


async def nothing(ctx: CallContext, params: dict[str, Any]) -> None:
    return None


@pytest.mark.parametrize(
    "raw",
    [b"\xff", b"NaN", b"-Infinity", b"1e999", b"{", b"[" * 50000, b"1" * 5000, b""],
)
def test_decode_refuses_what_cannot_round_trip(raw: bytes) -> None:
    with pytest.raises(errors.ParseError) as e:
        protocol.decode(raw)
    assert e.value.data["reason"]


def test_encode_keeps_lone_surrogates_valid() -> None:
    line = protocol.encode(protocol.result_response("\ud800", None))
    assert line.isascii() and b"\\ud800" in line


@pytest.mark.parametrize(
    ("message", "rid"),
    [
        ([], None),
        ({"jsonrpc": "2.0", "method": "m", "id": {}}, None),
        ({"jsonrpc": "2.0", "method": "m", "id": False}, None),
        ({"jsonrpc": 2, "method": "m", "id": 5}, 5),
        ({"jsonrpc": "2.0", "id": "x"}, "x"),
        ({"jsonrpc": "2.0", "method": "m", "params": "p", "id": 1.5}, 1.5),
    ],
)
def test_invalid_requests(message: Any, rid: Any) -> None:
    with pytest.raises(protocol.RequestError) as e:
        protocol.parse_request(message)
    assert e.value.request_id == rid
    assert e.value.error.code == errors.INVALID_REQUEST


def test_notification_is_a_request_without_id() -> None:
    assert protocol.parse_request({"jsonrpc": "2.0", "method": "m"}).is_notification
    assert not protocol.parse_request({"jsonrpc": "2.0", "method": "m", "id": None}).is_notification


def test_positional_and_rest_params_bind_to_names() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    m = Method("m", nothing, schema, positional=("a",), rest="more")
    assert m.bind([1, 2, 3]) == {"a": 1, "more": [2, 3]}
    assert m.bind({"a": 4}) == {"a": 4}
    with pytest.raises(errors.InvalidParams) as e:
        m.bind(["x"])
    assert e.value.data["errors"] == [{"path": "/a", "message": "'x' is not of type 'integer'"}]


def test_default_schema_takes_no_params() -> None:
    m = Method("m", nothing)
    assert m.bind(None) == {}
    assert m.bind([]) == {}
    with pytest.raises(errors.InvalidParams):
        m.bind({"x": 1})
    with pytest.raises(errors.InvalidParams):
        m.bind([1])


def test_error_messages_stay_short_for_huge_values() -> None:
    m = Method("m", nothing, {"type": "object", "properties": {"a": {"type": "integer"}}})
    with pytest.raises(errors.InvalidParams) as e:
        m.bind({"a": "x" * 100000})
    assert len(e.value.data["errors"][0]["message"]) < 300


def test_bad_schema_fails_at_registration() -> None:
    with pytest.raises(ValueError, match="invalid params schema"):
        Method("m", nothing, {"type": "no-such-type"})


def test_table_refuses_duplicates_and_reserved_names() -> None:
    table = MethodTable()
    table.add(Method("sandbox.create", nothing, kind=Kind.LIFECYCLE, mutating=True))
    with pytest.raises(ValueError, match="already registered"):
        table.add(Method("sandbox.create", nothing))
    with pytest.raises(ValueError, match="reserved"):
        table.add(Method("rpc.discover", nothing))
    with pytest.raises(errors.MethodNotFound):
        table.get("sandbox.nope")
    assert [m.name for m in table] == ["sandbox.create"]


def test_application_errors_have_distinct_codes_and_types() -> None:
    codes = [cls.code for cls in errors.APPLICATION_ERRORS]
    types = [cls.type for cls in errors.APPLICATION_ERRORS]
    assert len(set(codes)) == len(codes) and len(set(types)) == len(types)
    assert all(not -32768 <= c <= -32000 for c in codes)  # outside the spec's reserved range
    e = errors.WrongState(sandbox_id="a", state="paused")
    assert e.to_json() == {
        "code": errors.WRONG_STATE,
        "message": e.default_message,
        "data": {"type": "wrong_state", "sandbox_id": "a", "state": "paused"},
    }
