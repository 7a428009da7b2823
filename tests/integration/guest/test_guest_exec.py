"""The agent runs commands: output, stdin, timeouts, concurrency, disconnects, background."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.polling import wait_for
from wrennd.guest.client import BadRequest, Conflict, GuestClient, NotFound, ProcessNotFound
from wrennd.guest.protocol import CommandSpec, Exited, Lost, Output, Started

PY = "/usr/bin/python3"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def _wait_dead(pid: int, within: float = 5.0) -> None:
    await wait_for(lambda: not _alive(pid), timeout=within, what=f"pid {pid} exited")


async def test_binary_output_exit_code_and_streams(client: GuestClient) -> None:
    blob = bytes(range(256)) * 4096  # 1 MiB with every byte value
    code = (
        "import sys; sys.stdout.buffer.write(bytes(range(256)) * 4096);"
        "sys.stderr.write('oops'); sys.exit(7)"
    )
    res = await client.run(CommandSpec(argv=[PY, "-c", code]))
    assert res.stdout == blob
    assert res.stderr == b"oops"
    assert (res.code, res.signal, res.timed_out) == (7, None, False)
    assert res.pid > 0


async def test_stdin_env_cwd_and_shell(client: GuestClient, agent_root: Path) -> None:
    data = os.urandom(300_000)
    res = await client.run(CommandSpec(argv=["cat"], stdin=data))
    assert res.stdout == data and res.ok
    (agent_root / "work").mkdir()
    await client.init(env={"FROM_INIT": "1", "X": "init"})
    spec = CommandSpec(shell='pwd; echo "$FROM_INIT $X"', env={"X": "own"}, cwd="/work")
    res = await client.run(spec)
    assert res.stdout.decode().splitlines() == [str(agent_root / "work"), "1 own"]


async def test_timeout_kills_the_process_group(client: GuestClient) -> None:
    t0 = time.monotonic()
    res = await client.run(CommandSpec(shell="sleep 60 & echo $!; wait", timeout=0.5))
    assert res.timed_out and res.signal == 9 and res.code is None
    assert time.monotonic() - t0 < 5
    await _wait_dead(int(res.stdout))  # the shell's child went with its group


async def test_concurrent_execs(client: GuestClient) -> None:
    t0 = time.monotonic()
    specs = [CommandSpec(shell=f"sleep 0.5; echo {i}") for i in range(8)]
    results = await asyncio.gather(*(client.run(s) for s in specs))
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(8)]
    assert time.monotonic() - t0 < 4  # run side by side, not one after another


async def test_client_disconnect_kills_the_process_group(client: GuestClient) -> None:
    stream = client.exec(CommandSpec(shell="sleep 300 & echo $!; wait"))
    async with contextlib.aclosing(stream):
        started = await anext(stream)
        assert isinstance(started, Started)
        out = await anext(stream)
        assert isinstance(out, Output)
        child = int(out.data)
        assert _alive(started.pid) and _alive(child)
    await _wait_dead(started.pid)
    await _wait_dead(child)
    assert (await client.health()).status == "ok"


async def test_exec_errors(client: GuestClient) -> None:
    with pytest.raises(NotFound, match="No such file"):
        await client.run(CommandSpec(argv=["/no/such/binary"]))
    with pytest.raises(BadRequest, match="no such user") as err:
        await client.run(CommandSpec(argv=["true"], user="no-such-user-here"))
    assert err.value.code == "ENOUSER"
    with pytest.raises(NotFound, match="working directory"):
        await client.run(CommandSpec(argv=["true"], cwd="/missing"))


@pytest.mark.root
async def test_exec_as_another_user(client: GuestClient) -> None:
    res = await client.run(CommandSpec(shell="id -u; echo $USER", user="nobody"))
    assert res.stdout.decode().split() == ["65534", "nobody"]


async def test_background_process_survives_its_client(agent_url: str) -> None:
    spec = CommandSpec(shell="echo first; sleep 0.2; echo second; sleep 60")
    async with GuestClient(agent_url) as first:
        info = await first.start(spec)
        assert info.running and info.pid > 0
    async with GuestClient(agent_url) as second:
        listed = await second.processes()
        assert [p.id for p in listed] == [info.id] and listed[0].running
        events = []
        async with contextlib.aclosing(second.attach(info.id)) as stream:
            async for event in stream:
                events.append(event)
                if isinstance(event, Output) and b"second" in event.data:
                    break
        assert isinstance(events[0], Started) and events[0].pid == info.pid
        assert b"".join(e.data for e in events if isinstance(e, Output)) == b"first\nsecond\n"
        assert _alive(info.pid)  # detaching does not kill it
        await second.signal(info.id, "TERM")
        tail = [e async for e in second.attach(info.id, since=3)]
        assert isinstance(tail[-1], Exited) and tail[-1].signal == 15
        with pytest.raises(Conflict):
            await second.signal(info.id, 9)
        await second.forget(info.id)
        with pytest.raises(ProcessNotFound):
            await second.process(info.id)
        assert await second.processes() == []


async def test_reattach_reports_output_beyond_the_buffer(
    start_agent: Callable[..., object],
) -> None:
    agent = start_agent("--keep-output", "1000")
    code = (
        "import sys, time\n"
        "for i in range(40): print(f'{i:03} ' + 'x' * 96, flush=True); time.sleep(0.005)"
    )
    async with GuestClient(agent.url) as c:  # type: ignore[attr-defined]
        info = await c.start(CommandSpec(argv=[PY, "-u", "-c", code]))
        async for _ in c.attach(info.id):  # follow it to its exit
            pass
        assert not (await c.process(info.id)).running
        events = [e async for e in c.attach(info.id, follow=False)]
    lost = [e for e in events if isinstance(e, Lost)]
    kept = b"".join(e.data for e in events if isinstance(e, Output))
    assert lost and lost[0].chunks > 0
    assert kept.endswith(b"039 " + b"x" * 96 + b"\n") and len(kept) <= 1000 + 4096
    assert isinstance(events[-1], Exited) and events[-1].code == 0
