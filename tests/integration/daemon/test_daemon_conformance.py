"""Every example of the JSON-RPC 2.0 specification (section 7), over a real socket.

The examples' "-->" lines are sent as written; "<--" answers are compared
by code, message and id (batch answers in any order, as the spec allows).
Where the spec expects no answer at all, a ping sent right after must be
the next line the server writes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from wrennd.rpc import errors

Demo = Any


class Line:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, text: str) -> None:
        self.writer.write(text.encode() + b"\n")
        await self.writer.drain()

    async def answer(self, text: str) -> Any:
        await self.send(text)
        return json.loads(await asyncio.wait_for(self.reader.readline(), 5))

    async def no_answer(self, text: str) -> None:
        await self.send(text)
        ping = await self.answer('{"jsonrpc":"2.0","method":"ping","id":"sentinel"}')
        assert ping == {"jsonrpc": "2.0", "result": "pong", "id": "sentinel"}


@pytest.fixture
async def line(demo: Demo, start_server: Any) -> Any:
    _, path = await start_server(demo.table)
    reader, writer = await asyncio.open_unix_connection(path)
    yield Line(reader, writer)
    writer.close()


def error(code: int, message: str, rid: Any) -> tuple[int, str, Any]:
    return code, message, rid


def shape(answer: dict[str, Any]) -> Any:
    assert answer["jsonrpc"] == "2.0"
    if "error" in answer:
        assert "result" not in answer
        assert isinstance(answer["error"]["data"], dict)
        return answer["error"]["code"], answer["error"]["message"], answer["id"]
    return answer


async def test_positional_parameters(line: Line) -> None:
    r = await line.answer('{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}')
    assert r == {"jsonrpc": "2.0", "result": 19, "id": 1}
    r = await line.answer('{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}')
    assert r == {"jsonrpc": "2.0", "result": -19, "id": 2}


async def test_named_parameters(line: Line) -> None:
    r = await line.answer(
        '{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, '
        '"id": 3}'
    )
    assert r == {"jsonrpc": "2.0", "result": 19, "id": 3}
    r = await line.answer(
        '{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, '
        '"id": 4}'
    )
    assert r == {"jsonrpc": "2.0", "result": 19, "id": 4}


async def test_notifications(line: Line, demo: Demo) -> None:
    await line.no_answer('{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}')
    await line.no_answer('{"jsonrpc": "2.0", "method": "foobar"}')
    # The notification was executed, only its answer suppressed.
    assert demo.calls == [("update", {"values": [1, 2, 3, 4, 5]})]


async def test_non_existent_method(line: Line) -> None:
    r = await line.answer('{"jsonrpc": "2.0", "method": "foobar", "id": "1"}')
    assert shape(r) == error(-32601, "Method not found", "1")


async def test_invalid_json(line: Line) -> None:
    r = await line.answer('{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]')
    assert shape(r) == error(-32700, "Parse error", None)


async def test_invalid_request_object(line: Line) -> None:
    r = await line.answer('{"jsonrpc": "2.0", "method": 1, "params": "bar"}')
    assert shape(r) == error(-32600, "Invalid Request", None)


async def test_batch_invalid_json(line: Line) -> None:
    r = await line.answer(
        '[ {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},'
        '{"jsonrpc": "2.0", "method" ]'
    )
    assert shape(r) == error(-32700, "Parse error", None)


async def test_empty_array(line: Line) -> None:
    r = await line.answer("[]")
    assert shape(r) == error(-32600, "Invalid Request", None)


async def test_invalid_batch_but_not_empty(line: Line) -> None:
    r = await line.answer("[1]")
    assert [shape(x) for x in r] == [error(-32600, "Invalid Request", None)]


async def test_invalid_batch(line: Line) -> None:
    r = await line.answer("[1,2,3]")
    assert [shape(x) for x in r] == [error(-32600, "Invalid Request", None)] * 3


async def test_rpc_call_batch(line: Line, demo: Demo) -> None:
    r = await line.answer(
        "["
        '{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},'
        '{"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},'
        '{"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},'
        '{"foo": "boo"},'
        '{"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},'
        '{"jsonrpc": "2.0", "method": "get_data", "id": "9"}'
        "]"
    )
    expected = [
        {"jsonrpc": "2.0", "result": 7, "id": "1"},
        {"jsonrpc": "2.0", "result": 19, "id": "2"},
        error(-32600, "Invalid Request", None),
        error(-32601, "Method not found", "5"),
        {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"},
    ]
    got = [shape(x) for x in r]
    assert len(got) == len(expected)
    assert all(e in got for e in expected)
    assert demo.calls == [("notify_hello", {"value": 7})]


async def test_rpc_call_batch_all_notifications(line: Line, demo: Demo) -> None:
    await line.no_answer(
        '[{"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},'
        '{"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}]'
    )
    assert demo.calls == [("notify_hello", {"value": 7})]


# Rules of the specification beyond its examples.


async def test_invalid_params_name_the_path(line: Line) -> None:
    r = await line.answer('{"jsonrpc":"2.0","method":"subtract","params":{"minuend":"a"},"id":7}')
    code, _, rid = shape(r)
    assert (code, rid) == (errors.INVALID_PARAMS, 7)
    paths = {e["path"] for e in r["error"]["data"]["errors"]}
    assert paths == {"/", "/minuend"}


async def test_too_many_positional_params(line: Line) -> None:
    r = await line.answer('{"jsonrpc":"2.0","method":"subtract","params":[1,2,3],"id":8}')
    assert shape(r)[0] == errors.INVALID_PARAMS


@pytest.mark.parametrize(
    "text",
    [
        '{"jsonrpc":"2.0","method":"ping","id":NaN}',
        '{"jsonrpc":"2.0","method":"ping","id":1e400}',
        '{"jsonrpc":"2.0","method":"ping","id":' + "9" * 5000 + "}",
        "[" * 100000,
    ],
    ids=["nan", "float-overflow", "int-too-long", "nesting"],
)
async def test_json_python_accepts_but_cannot_echo_is_a_parse_error(line: Line, text: str) -> None:
    assert shape(await line.answer(text)) == error(-32700, "Parse error", None)


@pytest.mark.parametrize(
    ("text", "rid"),
    [
        ('{"jsonrpc":"1.0","method":"ping","id":3}', 3),
        ('{"method":"ping","id":"a"}', "a"),
        ('{"jsonrpc":"2.0","method":"ping","id":true}', None),
        ('{"jsonrpc":"2.0","method":"ping","id":[1]}', None),
        ('{"jsonrpc":"2.0","method":"ping","params":3,"id":4}', 4),
    ],
)
async def test_invalid_requests_echo_the_id_when_it_is_valid(
    line: Line, text: str, rid: Any
) -> None:
    assert shape(await line.answer(text)) == error(-32600, "Invalid Request", rid)


async def test_null_id_is_a_request_not_a_notification(line: Line) -> None:
    r = await line.answer('{"jsonrpc":"2.0","method":"ping","id":null}')
    assert r == {"jsonrpc": "2.0", "result": "pong", "id": None}


async def test_non_utf8_is_a_parse_error(line: Line) -> None:
    line.writer.write(b'{"jsonrpc":"2.0","method":"\xff","id":1}\n')
    r = json.loads(await line.reader.readline())
    assert shape(r) == error(-32700, "Parse error", None)


async def test_blank_lines_and_crlf_are_tolerated(line: Line) -> None:
    await line.no_answer("   ")
    r = await line.answer('{"jsonrpc":"2.0","method":"ping","id":1}\r')
    assert r["result"] == "pong"


async def test_last_message_without_newline_is_answered_at_eof(line: Line) -> None:
    line.writer.write(b'{"jsonrpc":"2.0","method":"ping","id":1}')
    line.writer.write_eof()
    assert json.loads(await line.reader.readline())["result"] == "pong"
    assert await line.reader.read() == b""  # then the server closes
