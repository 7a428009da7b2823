"""Shared message types: round trips, validation messages, and what the guest side may import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wrennd.guest import bundle
from wrennd.guest import protocol as p

GUEST_DIR = Path(bundle.__file__).resolve().parent
REPO = GUEST_DIR.parents[1]


@given(
    argv=st.lists(st.text(min_size=1), min_size=1, max_size=4),
    env=st.dictionaries(st.text(min_size=1).filter(lambda k: "=" not in k), st.text(), max_size=3),
    stdin=st.none() | st.binary(max_size=64),
    timeout=st.none() | st.floats(min_value=0, max_value=1e6),
)
def test_command_spec_round_trip(
    argv: list[str], env: dict[str, str], stdin: bytes | None, timeout: float | None
) -> None:
    spec = p.CommandSpec(argv=argv, env=env, cwd="/w", user="u", stdin=stdin, timeout=timeout)
    assert p.CommandSpec.from_json(spec.to_json()) == spec


@given(data=st.binary(max_size=256), seq=st.integers(min_value=0, max_value=2**40))
def test_events_round_trip(data: bytes, seq: int) -> None:
    events: list[p.Event] = [
        p.Started(42, "abc"),
        p.Output("stderr", data, seq),
        p.Lost(3),
        p.Exited(None, 9, True),
        p.Exited(0, None),
    ]
    for event in events:
        assert p.event_from_json(p.parse_object(p.event_line(event))) == event


def test_round_trips_of_records() -> None:
    info = p.ProcessInfo("id1", 7, ["sh", "-c", "x"], False, 3, None, 1.5)
    assert p.ProcessInfo.from_json(info.to_json()) == info
    f = p.FileInfo("a", "/d/a", "symlink", 1, 0o777, 0, 0, 2.0, "b")
    assert p.FileInfo.from_json(f.to_json()) == f
    m = p.Metrics(2, 12.5, 0.3, 100.0, 1000, 400, 5000, 1000)
    assert p.Metrics.from_json(m.to_json()) == m and (m.mem_used, m.disk_used) == (600, 4000)
    init = p.InitRequest({"A": "b"}, "root", 10**18)
    assert p.InitRequest.from_json(init.to_json()) == init


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({}, "exactly one of 'argv' and 'shell'"),
        ({"argv": []}, "non-empty list of strings"),
        ({"argv": ["a", 1]}, "non-empty list of strings"),
        ({"shell": 5}, "field 'shell': expected str, got int"),
        ({"shell": "x", "timeout": True}, "expected a number, got a boolean"),
        ({"shell": "x", "timeout": -0.1}, "must not be negative"),
        ({"shell": "x", "env": {"": "v"}}, "field 'env'"),
        ({"shell": "x", "env": {"K": 1}}, "field 'env'"),
        ({"shell": "x", "stdin": "a"}, "not valid base64"),
        ({"shell": "x", "cwd": ["/"]}, "field 'cwd'"),
    ],
)
def test_command_spec_errors_name_the_field(obj: p.JSON, message: str) -> None:
    with pytest.raises(p.ProtocolError, match=message.replace("(", r"\(")):
        p.CommandSpec.from_json(obj)


def test_small_fields() -> None:
    assert p.signal_field({"signal": "term"}) == 15
    assert p.signal_field({"signal": "SIGKILL"}) == 9
    assert p.signal_field({}) == 15
    for bad in ("SIGNOPE", 0, 99, True, 1.5):
        with pytest.raises(p.ProtocolError, match="signal"):
            p.signal_field({"signal": bad})
    assert p.mode_field({"mode": 0o755}) == 0o755
    with pytest.raises(p.ProtocolError, match="not a permission mode"):
        p.mode_field({"mode": 0o10000})
    for bad_path in ("", "rel", "/a\0b", None):
        with pytest.raises(p.ProtocolError, match="absolute path"):
            p.path_field({"path": bad_path})
    with pytest.raises(p.ProtocolError, match="bad JSON"):
        p.parse_object(b"{")
    with pytest.raises(p.ProtocolError, match="expected a JSON object"):
        p.parse_object(b"[]")
    with pytest.raises(p.ProtocolError, match="unknown event type"):
        p.event_from_json({"type": "nope"})
    with pytest.raises(p.ProtocolError, match="must be positive"):
        p.InitRequest.from_json({"time_ns": 0})


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in ("wrennd", "wrennd.guest"):  # `from wrennd.guest import x`
                found |= {f"{node.module}.{a.name}" for a in node.names}
            else:
                found.add(node.module)
    return found


@pytest.mark.parametrize("name", bundle.GUEST_MODULES)
def test_guest_modules_import_only_what_the_image_has(name: str) -> None:
    guest = {f"wrennd.guest.{m.removesuffix('.py')}" for m in bundle.GUEST_MODULES}
    # The message types are shared with the host and need the standard library only.
    shared = name == "protocol.py"
    # The bundle stages wrennd.durable beside them (standard library only, tested below).
    allowed = set() if shared else guest | {"aiohttp", "wrennd.durable"}
    for module in _imports(GUEST_DIR / name):
        top = module.split(".")[0]
        assert top in sys.stdlib_module_names or module in allowed or top in allowed, (
            f"{name} imports {module}, which the guest image does not carry"
        )


def test_the_bundled_durable_module_needs_the_standard_library_only() -> None:
    for module in _imports(GUEST_DIR.parent / "durable.py"):
        assert module.split(".")[0] in sys.stdlib_module_names, module


def test_wrenn_init_refuses_to_run_unless_pid_1() -> None:
    # On a host it would mount, kill(-1) and reboot: the PID check stops it first.
    init = REPO / "images" / "wrenn-init"
    res = subprocess.run(
        ["/usr/bin/python3", str(init)], capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 1
    assert "must run as PID 1" in res.stderr
