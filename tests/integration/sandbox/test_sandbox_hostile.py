"""Random JSON for every parameter of every method (issue 20): the answer is never
-32603 (internal_error, a daemon bug by the README's definition), and a refused call
changes nothing on disk.

One real daemon (fcsim, the test bed network) holds a running and a paused sandbox;
hypothesis draws, for each method the daemon lists in ``host.methods``, params made
of the schema's own keys (and a stray one) with values that are either random JSON
or values that reach deeper: the real sandbox ids, the base image, hostile paths
(a FIFO, /dev/zero, /etc/shadow, NUL, a lone surrogate).  Calls that would end the
fixture's sandboxes (destroy, pause, resume of the real ids) or create new ones get
ids and names that do not exist, so every example runs in milliseconds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.sandbox.running_daemon import Daemon

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd]

INTERNAL_ERROR = -32603
ABSENT_ID = "sb-000000000000"
# Methods that would end or multiply the fixture's sandboxes if given a real id or image.
ENDING = {"sandbox.destroy", "sandbox.pause", "sandbox.resume", "template.create", "sandbox.create"}


ENDS_DAEMON = {"host.restart"}


class LineClient:
    """A blocking JSON-RPC client: one call at a time, notifications skipped."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rwb")
        self.next_id = 0

    def call(self, method: str, params: Any = None, *, omit: bool = False) -> dict[str, Any]:
        self.next_id += 1
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if not omit:
            request["params"] = params
        self.file.write(json.dumps(request).encode() + b"\n")
        self.file.flush()
        while True:
            line = self.file.readline()
            assert line, f"the daemon closed the connection during {method}"
            answer: dict[str, Any] = json.loads(line)
            if answer.get("id") == self.next_id:
                return answer

    def result(self, method: str, params: Any = None) -> Any:
        answer = self.call(method, params, omit=params is None)
        assert "error" not in answer, answer
        return answer["result"]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class World:
    def __init__(self, daemon: Daemon, client: LineClient, running: str, paused: str) -> None:
        self.daemon = daemon
        self.client = client
        self.running = running
        self.paused = paused
        self.fifo = daemon.place.run_dir / "fuzz.fifo"
        # host.restart ends the daemon by design (keep-alive restart): not a hostile input.
        self.methods = {
            m["name"]: m for m in client.result("host.methods") if m["name"] not in ENDS_DAEMON
        }

    def disk(self) -> dict[str, Any]:
        """What a refused call must not change: every path of state_dir, its mode and
        (but for the running sandbox's layer, which its guest writes) its content."""
        out: dict[str, Any] = {}
        root = self.daemon.place.state_dir
        for top, _dirs, files in os.walk(root):
            for name in ["", *files]:
                path = Path(top) / name
                st_ = os.lstat(path)
                key = str(path.relative_to(root))
                if name and not name.startswith("rootfs") and st_.st_size < (4 << 20):
                    out[key] = (st_.st_mode, hashlib.sha256(path.read_bytes()).hexdigest())
                else:
                    out[key] = (st_.st_mode,)
        return out


def _wait_socket(path: Path, daemon: Daemon) -> LineClient:
    deadline = time.monotonic() + 30
    while True:
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log.read_text()
        try:
            return LineClient(path)
        except OSError:
            assert time.monotonic() < deadline, "the daemon did not listen"
            time.sleep(0.1)


@pytest.fixture
def world(place: Any) -> Iterator[World]:
    daemon = Daemon(place)
    daemon.start()
    client = _wait_socket(daemon.socket, daemon)
    try:
        running = client.result("sandbox.create", {"image": "base", "memory_mib": 64})["id"]
        paused = client.result("sandbox.create", {"image": "base", "memory_mib": 64})["id"]
        client.result("sandbox.pause", {"id": paused})
        # sandbox.get (its usage) waits for the work a pause does after its answer (the
        # kept disk, the prefetch map): the refusals' disk comparisons start from rest.
        client.result("sandbox.get", {"id": paused})
        w = World(daemon, client, running, paused)
        os.mkfifo(w.fifo)
        yield w
        for sb in client.result("sandbox.list")["sandboxes"]:
            client.call("sandbox.destroy", {"id": sb["id"]})
    finally:
        client.close()
        daemon.stop(signal.SIGTERM)
    assert "internal_error" not in daemon.log.read_text()
    assert not place.leaks()


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
HOSTILE = [
    "",
    "..",
    "a/b",
    "../../etc/passwd",
    "/dev/zero",
    "/etc/shadow",
    "/proc/self/mem",
    "nul\x00inside",
    "lone \ud800 surrogate",
    "ünïcödé",
    "x" * 5000,
    "sb-zzzzzzzzzzzz",
    "-1",
    "ÿ",
]
HOSTILE_TEXT = st.sampled_from(HOSTILE)
EDGES: list[Any] = [None, True, 0, -1, 2**64, 1e308, -0.5, [], {}, [None], {"": ""}]


TEXT = st.one_of(HOSTILE_TEXT, st.text(max_size=30))


def _typed(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of the type the schema asks for (so that validation lets many through)."""
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    options: list[st.SearchStrategy[Any]] = []
    for kind in kinds:
        if kind == "string":
            options.append(TEXT)
        elif kind == "integer":
            lo, hi = schema.get("minimum", -(2**40)), schema.get("maximum", 2**40)
            options.append(st.integers(min_value=lo - 2, max_value=hi + 2))
        elif kind == "number":
            options.append(st.floats(allow_nan=False, allow_infinity=False) | st.integers(-5, 5))
        elif kind == "boolean":
            options.append(st.booleans())
        elif kind == "null":
            options.append(st.none())
        elif kind == "array":
            options.append(st.lists(TEXT, min_size=1, max_size=4))
        elif kind == "object":
            options.append(st.dictionaries(TEXT, TEXT, max_size=3))
    if "enum" in schema:
        options.append(st.sampled_from(schema["enum"]))
    return st.one_of(*options) if options else JSON


def _value(world: World, method: str, key: str) -> st.SearchStrategy[Any]:
    ending = method in ENDING
    schema = world.methods[method]["params"].get("properties", {}).get(key, {})
    typed = _typed(schema)
    deeper: list[Any] = [ABSENT_ID]
    if key in ("id", "sandbox_id") and not ending:
        deeper += [world.running, world.paused, world.running]
    if key in ("image", "name") and method not in ("sandbox.create", "template.create"):
        deeper.append("base")
    if key == "path":
        if method == "image.register":
            deeper += [str(world.fifo), "/dev/zero", "/etc/shadow", "/", "/nonexistent"]
        else:  # guest paths: somewhere harmless, so that accepted calls leave the guest usable
            typed = TEXT.map(lambda t: "/tmp/fuzz/" + t.lstrip("/."))
            return st.one_of(JSON, typed, typed, HOSTILE_TEXT)
    if key in ("data", "stdin"):
        deeper += ["aGVsbG8=", "ÿÿÿÿ", "not base64!", "aGVsbG8"]
    if key == "timeout_s":
        deeper += [0, -1, 1e300, 3600]
    if key == "memory_mib":
        deeper += [1 << 20, 16, 0]
    return st.one_of(JSON, typed, typed, st.sampled_from(deeper))


def _plausible(world: World, method: str, key: str) -> st.SearchStrategy[Any]:
    """A value that passes the schema most of the time, so that the call goes deeper."""
    schema = world.methods[method]["params"].get("properties", {}).get(key, {})
    if key in ("id", "sandbox_id"):
        ids = [ABSENT_ID] if method in ENDING else [world.running, world.running, world.paused]
        return st.sampled_from(ids)
    if key in ("image", "name", "template"):
        names = ["base"] if method not in ("sandbox.create", "template.create") else []
        return st.sampled_from([*names, "nope", "fuzz-1"])
    if key == "path":
        return _value(world, method, key)
    if key in ("data", "stdin"):
        return st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())
    if key == "argv":
        return st.lists(st.sampled_from(["true", "echo", "ls", "/nonexistent", "-1"]), min_size=1)
    if key == "shell":
        return st.sampled_from(["true", "echo hi", "exit 3", "kill -9 $$"])
    if key in ("timeout", "timeout_s"):
        return st.sampled_from([0.5, 5, 30])
    return _typed(schema)


@st.composite
def calls(draw: st.DrawFn, world: World) -> tuple[str, Any, bool]:
    method = draw(st.sampled_from(sorted(world.methods)))
    params_schema = world.methods[method]["params"]
    keys = sorted(params_schema.get("properties", {}))
    shape = draw(st.sampled_from(["one_bad", "one_bad", "one_bad", "random", "other", "omitted"]))
    if shape == "omitted":
        return method, None, True
    if shape == "other":
        return method, draw(JSON), False
    required = params_schema.get("required", [])
    chosen = draw(st.lists(st.sampled_from(keys), unique=True)) if keys else []
    chosen += [k for k in required if k not in chosen and draw(st.integers(0, 9)) < 8]
    if shape == "one_bad":
        params = {k: draw(_plausible(world, method, k)) for k in chosen}
        if keys:  # one parameter gets anything at all
            bad = draw(st.sampled_from(keys))
            params[bad] = draw(_value(world, method, bad))
    else:
        params = {k: draw(_value(world, method, k)) for k in chosen}
    if draw(st.integers(0, 9)) == 0:
        params[draw(st.text(max_size=8))] = draw(JSON)
    return method, params, False


def _fixed(world: World, method: str, key: str) -> Any:
    """One plausible value: the sweep changes one parameter at a time around these."""
    if key in ("id", "sandbox_id"):
        return ABSENT_ID if method in ENDING else world.running
    if key in ("image", "name", "template"):
        return "fuzz-1" if method in ("image.register", "template.create") else "base"
    if key == "path":
        return str(world.fifo) if method == "image.register" else "/tmp/fuzz/x"
    if key in ("data", "stdin"):
        return "aGVsbG8="
    if key == "argv":
        return ["true"]
    if key == "process":
        return "p-1"
    if key in ("timeout", "timeout_s"):
        return 5
    if key == "memory_mib":
        return 64
    if key == "vcpus":
        return 1
    return None


def _check(world: World, method: str, params: Any, omit: bool = False) -> None:
    before = world.disk()
    answer = world.client.call(method, params, omit=omit)
    error = answer.get("error")
    assert error is None or error["code"] != INTERNAL_ERROR, (method, params, error)
    if error is not None:
        assert world.disk() == before, f"refused {method} {params!r} changed state_dir"


def test_every_parameter_gets_every_hostile_value(world: World) -> None:
    """The deterministic sweep: each parameter of each method, the others plausible."""
    for name, method in sorted(world.methods.items()):
        schema = method["params"]
        keys = sorted(schema.get("properties", {}))
        base = {k: _fixed(world, name, k) for k in schema.get("required", [])}
        base = {k: v for k, v in base.items() if v is not None}
        _check(world, name, base)
        for key in keys:
            if name in ENDING and key == "argv":
                continue
            for value in [*HOSTILE, *EDGES]:
                _check(world, name, {**base, key: value})
    assert world.client.result("sandbox.get", {"id": world.running})["state"] == "running"


def test_random_params_never_internal_error_and_refusals_change_nothing(world: World) -> None:
    @settings(
        max_examples=int(os.environ.get("WRENND_FUZZ_EXAMPLES", "400")),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(calls(world))
    def one(call: tuple[str, Any, bool]) -> None:
        method, params, omit = call
        _check(world, method, params, omit)

    one()
    # The daemon is still whole: its sandboxes answer.
    assert world.client.result("sandbox.get", {"id": world.running})["state"] == "running"
    assert world.client.result("sandbox.get", {"id": world.paused})["state"] == "paused"
