"""The agent's HTTP surface: health, init, metrics, bad requests, oversized headers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import pytest

from wrennd.guest.client import AgentUnavailable, BadRequest, Conflict, GuestClient
from wrennd.guest.protocol import CommandSpec


async def test_health_and_metrics(client: GuestClient, agent: object) -> None:
    health = await client.health()
    assert health.status == "ok" and health.pid == agent.pid and not health.frozen  # type: ignore[attr-defined]
    m = await client.metrics()
    assert m.cpu_count >= 1 and 0 <= m.cpu_percent <= 100
    assert 0 < m.mem_available <= m.mem_total and m.mem_used > 0
    assert 0 < m.disk_free <= m.disk_total


async def test_init_sets_defaults_and_reports_drift(client: GuestClient) -> None:
    res = await client.init(env={"GREETING": "hi"}, user="root", time_ns=time.time_ns() - 10**9)
    assert not res.thawed
    assert not res.clock_stepped  # this agent runs with --no-set-clock: never step a host clock
    assert -2e9 < res.drift_ns < -0.5e9  # the host said: one second behind the guest
    out = await client.run(CommandSpec(shell="echo $GREETING"))
    assert out.stdout == b"hi\n"
    with pytest.raises(BadRequest, match="no such user"):
        await client.init(user="no-such-user-here")


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/exec", b"{not json", "bad JSON"),
        ("/exec", b"[1, 2]", "expected a JSON object"),
        ("/exec", b'{"argv": "ls"}', "field 'argv'"),
        ("/exec", b'{"argv": ["ls"], "shell": "ls"}', "exactly one of"),
        ("/exec", b'{"argv": ["ls"], "timeout": -1}', "must not be negative"),
        ("/exec", b'{"argv": ["ls"], "stdin": "***"}', "base64"),
        ("/exec", b'{"argv": ["ls"], "env": {"A=B": "x"}}', "field 'env'"),
        ("/init", b'{"time_ns": true}', "field 'time_ns'"),
        ("/files/mkdir", b'{"path": "/x", "mode": 99999}', "not a permission mode"),
        ("/processes/zzz/signal", b'{"signal": "SIGNOPE"}', "unknown signal"),
    ],
)
async def test_bad_requests_get_400_with_a_message(
    agent_url: str, path: str, body: bytes, message: str
) -> None:
    async with aiohttp.ClientSession() as s, s.post(agent_url + path, data=body) as resp:
        assert resp.status == 400
        err = (await resp.json())["error"]
        assert err["code"] == "EBADREQUEST" and message in err["message"]


async def test_unknown_route_and_missing_process(agent_url: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(agent_url + "/nope") as resp:
            assert resp.status == 404 and (await resp.json())["error"]["code"] == "ENOROUTE"
        async with s.get(agent_url + "/processes/abc") as resp:
            assert resp.status == 404 and (await resp.json())["error"]["code"] == "ENOPROCESS"


async def test_oversized_headers_are_refused_and_the_agent_lives_on(
    client: GuestClient, agent_url: str
) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.get(agent_url + "/health", headers={"X-Big": "a" * 20000}) as resp,
    ):
        assert resp.status == 400
    assert (await client.health()).status == "ok"


async def test_prepare_refuses_a_root_that_is_not_a_mount(client: GuestClient) -> None:
    # The temporary root lives on the host's filesystem: freezing it would stall the host.
    with pytest.raises(Conflict, match="not a mount point"):
        await client.prepare_snapshot()
    assert await client.thaw() is False


async def test_wait_healthy_deadline() -> None:
    async with GuestClient("http://127.0.0.1:9", timeout=0.2, retries=0) as c:
        t0 = time.monotonic()
        with pytest.raises(AgentUnavailable, match="not healthy in time"):
            await c.wait_healthy(time.monotonic() + 0.5)
        assert time.monotonic() - t0 < 2


async def test_idempotent_calls_retry_until_the_agent_is_up(
    start_agent: Callable[..., object], unused_tcp_port: int
) -> None:
    # 9 retries back off for 25 s in all: room for the agent's start on a loaded host.
    async with GuestClient(f"http://127.0.0.1:{unused_tcp_port}", retries=9) as c:
        with pytest.raises(AgentUnavailable):  # a command is never retried: fails at once
            await c.run(CommandSpec(argv=["true"]))

        def start_later() -> object:
            time.sleep(0.3)
            return start_agent("--port", str(unused_tcp_port))

        later = asyncio.get_running_loop().run_in_executor(None, start_later)
        health = await c.health()  # refused at first, retried with backoff
        await later
        assert health.status == "ok"
