"""A connection upgraded to a raw byte channel (wrennd.rpc.channel) on a real RpcServer:
the bytes after a stream call are not lines, both ways have flow control, and the
call is refused anywhere but as a connection's first message."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from typing import Any

from tests.integration.daemon.conftest import Demo, Start
from tests.polling import wait_for
from wrennd.rpc import channel as channel_mod
from wrennd.rpc.channel import Channel
from wrennd.rpc.connection import Context
from wrennd.rpc.errors import INVALID_REQUEST, NotFound
from wrennd.rpc.methods import CallContext

TOKEN = {"type": "object", "properties": {"token": {"type": "string"}}, "required": ["token"]}


def stream_methods(demo: Demo) -> dict[str, Channel]:
    """``echo.stream``: token "echo" sends every byte back, "hold" keeps the channel unread,
    anything else is refused like an unknown transfer id."""
    held: dict[str, Channel] = {}
    echoes: set[asyncio.Task[None]] = set()

    async def echo(ch: Channel) -> None:
        while data := await ch.read():
            await ch.write(data)
        ch.close()

    @demo.table.register("echo.stream", params=TOKEN, stream=True)
    async def stream(ctx: CallContext, p: dict[str, Any]) -> Any:
        assert isinstance(ctx, Context) and ctx.channel is not None
        if p["token"] not in ("echo", "hold"):
            raise NotFound("no such transfer", transfer=p["token"])
        ctx.channel.claimed = True
        if p["token"] == "echo":
            task = asyncio.ensure_future(echo(ctx.channel))
            echoes.add(task)
            task.add_done_callback(echoes.discard)
        else:
            held["hold"] = ctx.channel
        return {"direction": p["token"]}

    return held


def line(method: str, params: Any, rid: int = 1) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}).encode()


async def test_bytes_after_the_stream_call_are_raw_and_come_back_exact(
    start_server: Start, demo: Demo
) -> None:
    stream_methods(demo)
    _, path = await start_server(demo.table)
    reader, writer = await asyncio.open_unix_connection(path)
    # JSON-looking bytes, newlines and binary, sent with the call in one write.
    payload = b'{"jsonrpc": "2.0"}\n\n' + os.urandom(24 << 20) + b"\n[1,2]\n"
    writer.write(line("echo.stream", {"token": "echo"}) + b"\n" + payload[:4096])
    answer = json.loads(await reader.readline())
    assert answer["result"] == {"direction": "echo"}

    async def send() -> None:
        writer.write(payload[4096:])
        await writer.drain()
        writer.write_eof()

    sender = asyncio.ensure_future(send())
    back = await reader.read()  # to EOF: the daemon closes after the last byte
    await sender
    writer.close()
    assert hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()


async def test_a_refused_stream_call_answers_and_closes(start_server: Start, demo: Demo) -> None:
    stream_methods(demo)
    _, path = await start_server(demo.table)
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(line("echo.stream", {"token": "0" * 32}) + b"\n" + b"raw bytes, never read")
    answer = json.loads(await reader.readline())
    assert answer["error"]["data"] == {"type": "not_found", "transfer": "0" * 32}
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed: nothing more comes
    writer.close()


async def test_a_stream_call_is_only_a_connection_s_first_message(
    start_server: Start, demo: Demo
) -> None:
    stream_methods(demo)
    _, path = await start_server(demo.table)
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(line("ping", {}, 1) + b"\n" + line("echo.stream", {"token": "echo"}, 2) + b"\n")
    writer.write(b"[" + line("echo.stream", {"token": "echo"}, 3) + b"]\n")
    writer.write(line("ping", {}, 4) + b"\n")
    answers = [json.loads(await reader.readline()) for _ in range(4)]
    flat = [a[0] if isinstance(a, list) else a for a in answers]
    by_id = {a["id"]: a for a in flat}
    assert by_id[1]["result"] == "pong"
    assert by_id[2]["error"]["code"] == INVALID_REQUEST
    assert by_id[3]["error"]["code"] == INVALID_REQUEST
    assert by_id[4]["result"] == "pong"  # still a JSON-RPC connection
    writer.close()


async def test_a_channel_nobody_reads_stops_reading_its_socket(
    start_server: Start, demo: Demo
) -> None:
    held = stream_methods(demo)
    _, path = await start_server(demo.table)
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(line("echo.stream", {"token": "hold"}) + b"\n")
    assert "result" in json.loads(await reader.readline())
    sent = 0

    async def flood() -> None:
        nonlocal sent
        block = bytes(1 << 20)
        while True:
            writer.write(block)
            await writer.drain()
            sent += len(block)

    task = asyncio.ensure_future(flood())
    await asyncio.sleep(1.0)
    stalled = sent
    await asyncio.sleep(0.5)
    assert sent == stalled and not task.done(), "the client was never held back"
    ch = held["hold"]
    # The daemon holds about READ_LIMIT (plus one socket read); the rest waits in the
    # kernel's socket buffers and in the blocked client.
    assert ch._buffered < channel_mod.READ_LIMIT + (1 << 20), ch._buffered
    got = 0
    while got < 4 * channel_mod.READ_LIMIT:  # reading resumes the socket: the client moves
        got += len(await ch.read())
    await wait_for(lambda: sent > stalled, timeout=10, what="the client writes again")
    task.cancel()
    writer.close()
