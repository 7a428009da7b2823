"""Interactive commands on the agent: stdin streamed in, PTY sessions, resize, signals."""

from __future__ import annotations

import asyncio

import pytest

from wrennd.guest.client import GuestClient
from wrennd.guest.protocol import CommandSpec, Exited, Output, Started
from wrennd.guest.session import GuestSession, SessionError


async def _drain(sess: GuestSession) -> tuple[bytes, bytes, Exited]:
    out = {"stdout": b"", "stderr": b""}
    async for event in sess.events():
        if isinstance(event, Output):
            out[event.stream] += event.data
        elif isinstance(event, Exited):
            return out["stdout"], out["stderr"], event
    raise AssertionError("no exit event")


async def test_stdin_is_streamed_byte_exact(client: GuestClient) -> None:
    payload = bytes(range(256)) * 1000
    async with await client.session(CommandSpec(argv=["sh", "-c", "cat; echo e >&2"])) as sess:
        for i in range(0, len(payload), 10000):
            await sess.send(payload[i : i + 10000])
        await sess.eof()
        out, err, exited = await _drain(sess)
    assert out == payload and err == b"e\n" and exited.code == 0


async def test_stdin_answers_as_it_arrives(client: GuestClient) -> None:
    """A line-by-line conversation: the command answers before stdin ends."""
    spec = CommandSpec(argv=["sh", "-c", "while read x; do echo got-$x; done"])
    async with await client.session(spec) as sess:
        events = sess.events()
        assert isinstance(await anext(events), Started)
        await sess.send(b"one\n")
        first = await asyncio.wait_for(anext(events), 10)
        assert isinstance(first, Output) and first.data == b"got-one\n"
        await sess.eof()
        assert isinstance(await anext(events), Exited)


async def test_pty_session_has_a_terminal_and_resizes(client: GuestClient) -> None:
    spec = CommandSpec(argv=["sh", "-c", "tty; stty size; read x; stty size; echo bye-$x"])
    async with await client.session(spec, pty=True, rows=30, cols=100) as sess:
        events = sess.events()
        seen = b""
        while b"30 100" not in seen:
            event = await asyncio.wait_for(anext(events), 10)
            if isinstance(event, Output):
                seen += event.data
        assert b"/dev/pts/" in seen
        await sess.resize(40, 120)
        await sess.send(b"now\n")
        out, _, exited = await _drain(sess)
    assert b"40 120" in out and b"bye-now" in out and exited.code == 0


async def test_signal_reaches_the_session(client: GuestClient) -> None:
    async with await client.session(CommandSpec(argv=["sleep", "60"]), pty=True) as sess:
        events = sess.events()
        assert isinstance(await anext(events), Started)
        await sess.signal("TERM")
        _, _, exited = await asyncio.wait_for(_drain(sess), 10)
    assert exited.signal == 15


async def test_spawn_errors_are_refused(client: GuestClient) -> None:
    async with await client.session(CommandSpec(argv=["/no/such/binary"])) as sess:
        with pytest.raises(SessionError) as e:
            await _drain(sess)
    assert e.value.code == "ENOENT"
