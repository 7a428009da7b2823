"""Fuzz the JSON-RPC server: >= 10,000 messages of random bytes, random JSON, wrongly typed
requests, huge and deeply nested values.  Every answer must be a valid JSON-RPC
response, and the server must stay responsive to another client throughout.

One server (in a thread, on uvloop) and one connection serve every example:
after each fuzz message a sentinel ping is sent on the same connection and the
answers are read up to the sentinel's; a second client pings in between.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wrennd.rpc.protocol import is_valid_id

Server = Any
METHODS = ["subtract", "sum", "update", "notify_hello", "get_data", "ping", "blob", "nope", ""]
FUZZ = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


class Wire:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")
        self.sentinels = 0
        self.answers = 0

    def exchange(self, payload: bytes) -> list[Any]:
        """Send one line and a sentinel; return the answers that came before the sentinel's."""
        self.sentinels += 1
        sid = f"sentinel-{self.sentinels}"
        ping = json.dumps({"jsonrpc": "2.0", "method": "ping", "id": sid}).encode()
        self.sock.sendall(payload + b"\n" + ping + b"\n")
        answers = []
        while True:
            line = self.file.readline()
            assert line.endswith(b"\n"), "the server closed the connection"
            answer = json.loads(line)
            check_answer(answer)
            if isinstance(answer, dict) and answer.get("id") == sid:
                assert answer.get("result") == "pong"
                self.answers += len(answers)
                return answers
            answers.append(answer)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def check_single(a: Any) -> None:
    assert isinstance(a, dict), a
    assert a.get("jsonrpc") == "2.0", a
    assert "id" in a and is_valid_id(a["id"]), a
    assert ("result" in a) != ("error" in a), a
    assert set(a) <= {"jsonrpc", "id", "result", "error"}, a
    if "error" in a:
        e = a["error"]
        assert isinstance(e, dict) and set(e) <= {"code", "message", "data"}, e
        assert isinstance(e["code"], int) and not isinstance(e["code"], bool), e
        assert isinstance(e["message"], str), e
        assert isinstance(e.get("data", {}), dict), e


def check_answer(a: Any) -> None:
    if isinstance(a, list):
        assert a, "an empty array is never a valid answer"
        for item in a:
            check_single(item)
    else:
        check_single(a)


def check_other_client(server: Server) -> None:
    other = Wire(server.path)
    try:
        assert other.exchange(b"") == []
    finally:
        other.close()


class Session:
    """The connection shared by all examples of one test, and a second, idle client."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.main = Wire(server.path)
        self.other = Wire(server.path)
        self.count = 0

    def run(self, payload: bytes) -> list[Any]:
        answers = self.main.exchange(payload)
        self.count += 1
        # The other client is served between any two fuzz messages.
        assert self.other.exchange(b"") == []
        return answers


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=8,
)
ids = st.none() | st.integers() | st.text(max_size=10) | json_values


@st.composite
def request_like(draw: st.DrawFn) -> dict[str, Any]:
    message: dict[str, Any] = {}
    if draw(st.booleans()):
        message["jsonrpc"] = draw(st.sampled_from(["2.0", "2.0", "1.0", 2.0]) | json_scalars)
    if draw(st.integers(0, 9)) > 0:
        message["method"] = draw(st.sampled_from(METHODS) | json_scalars)
    if draw(st.booleans()):
        message["params"] = draw(
            st.lists(json_values, max_size=4)
            | st.dictionaries(st.sampled_from(["minuend", "subtrahend", "size", "x"]), json_values)
            | json_values
        )
    if draw(st.booleans()):
        message["id"] = draw(ids)
    return message


def run_examples(server: Server, n: int, strategy: st.SearchStrategy[bytes]) -> None:
    session = Session(server)

    @settings(max_examples=n, **FUZZ)
    @given(strategy)
    def fuzz(payload: bytes) -> None:
        session.run(payload)

    try:
        fuzz()
        assert session.count >= n
    finally:
        session.main.close()
        session.other.close()


def one_line(data: bytes) -> bytes:
    return data.replace(b"\n", b" ")


def test_random_bytes(thread_server: Server) -> None:
    run_examples(thread_server, 4000, st.binary(max_size=512).map(one_line))


def test_random_json(thread_server: Server) -> None:
    run_examples(thread_server, 2000, json_values.map(lambda v: json.dumps(v).encode()))


def test_wrongly_typed_requests(thread_server: Server) -> None:
    single = request_like().map(lambda m: json.dumps(m).encode())
    batch = st.lists(request_like() | json_values, min_size=0, max_size=4).map(
        lambda b: json.dumps(b).encode()
    )
    run_examples(thread_server, 3000, single | batch)


@st.composite
def huge_or_deep(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(
            [
                "deep-array",
                "deep-object",
                "deep-params",
                "long-string",
                "long-number",
                "wide-batch",
                "big-result",
            ]
        )
    )
    n = draw(st.integers(1, 120_000))
    if kind == "deep-array":
        return b"[" * n + b"]" * draw(st.sampled_from([0, n]))
    if kind == "deep-object":
        depth = n // 8
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == "deep-params":
        depth = min(n, 5000)
        params = b"[" * depth + b"]" * depth
        return b'{"jsonrpc":"2.0","method":"subtract","params":{"minuend":' + params + b'},"id":1}'
    if kind == "long-string":
        return json.dumps(
            {"jsonrpc": "2.0", "method": "sum", "params": ["x" * n], "id": 2}
        ).encode()
    if kind == "long-number":
        return b'{"jsonrpc":"2.0","method":"sum","params":[' + b"7" * (n // 10 + 1) + b'],"id":3}'
    if kind == "wide-batch":
        item = b'{"jsonrpc":"2.0","method":"ping","id":4}'
        return b"[" + b",".join([item] * (n // 1000 + 1)) + b"]"
    return json.dumps(
        {"jsonrpc": "2.0", "method": "blob", "params": {"size": n * 10}, "id": 5}
    ).encode()


def test_huge_and_deeply_nested_values(thread_server: Server) -> None:
    run_examples(thread_server, 1000, huge_or_deep())
