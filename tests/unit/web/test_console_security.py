"""The console's guard and bridge: tokens, origins, hosts, the token file, the listen check."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from wrennd import config, daemon
from wrennd.config import HttpAddress
from wrennd.metrics import LoopLag
from wrennd.rpc.methods import CallContext, Kind, MethodTable
from wrennd.rpc.observe import CallRecord
from wrennd.rpc.server import Limits, RpcServer
from wrennd.web.auth import COOKIE, Guard, write_token
from wrennd.web.bridge import Bridge
from wrennd.web.server import WebConsole

ECHO = {"type": "object", "properties": {"x": {"type": "integer"}}, "additionalProperties": False}


def make_server() -> RpcServer:
    table = MethodTable()

    @table.register("echo", params=ECHO)
    async def echo(ctx: CallContext, p: dict[str, Any]) -> Any:
        return p

    @table.register("work", kind=Kind.LIFECYCLE, mutating=True)
    async def work(ctx: CallContext, p: dict[str, Any]) -> Any:
        for i, stage in enumerate(("one", "two")):
            await ctx.progress(stage=stage, done=i, total=2)
        await ctx.progress(stage="done", done=2, total=2)
        return "worked"

    return RpcServer(table, Limits(max_message_bytes=1024, max_inflight=4))


async def page(request: web.Request) -> web.StreamResponse:
    return web.Response(text="the page")


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], str, RpcServer]]:
    write_token(tmp_path / "old.token", "no-such-group")
    token = write_token(tmp_path / "http.token", "no-such-group")
    server = make_server()
    bridge = Bridge(server)
    guard = Guard(token, HttpAddress(host="127.0.0.1", port=1), allow_remote=False)
    app = web.Application(middlewares=[guard.middleware], client_max_size=1024)
    app.router.add_get("/test", page)
    app.router.add_get("/healthz", page)
    app.router.add_post("/rpc", bridge.post)
    app.router.add_get("/rpc", bridge.websocket)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    yield client, token, server
    await client.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


CALL = {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"x": 1}}


async def test_missing_wrong_and_old_tokens_get_401(rig: Any, tmp_path: Path) -> None:
    client, token, _ = rig
    old = (tmp_path / "old.token").read_text().strip()
    assert old != token
    for headers in ({}, bearer("wrong"), bearer(old)):
        r = await client.post("/rpc", json=CALL, headers=headers)
        assert r.status == 401, headers
        assert (await client.get("/test", headers=headers)).status == 401
    assert (await client.get(f"/test?token={old}", allow_redirects=False)).status == 401
    assert (await client.get("/healthz")).status == 200  # liveness needs no token
    r = await client.post("/rpc", json=CALL, headers=bearer(token))
    assert r.status == 200 and (await r.json())["result"] == {"x": 1}


async def test_foreign_origin_and_host_get_403(rig: Any) -> None:
    client, token, _ = rig
    evil = {**bearer(token), "Origin": "http://evil.example"}
    assert (await client.post("/rpc", json=CALL, headers=evil)).status == 403
    r = await client.get("/rpc", headers={**evil, "Upgrade": "websocket", "Connection": "Upgrade"})
    assert r.status == 403
    rebound = {**bearer(token), "Host": "attacker.example:8080"}
    assert (await client.post("/rpc", json=CALL, headers=rebound)).status == 403
    own = {**bearer(token), "Origin": str(client.make_url("")).rstrip("/")}
    assert (await client.post("/rpc", json=CALL, headers=own)).status == 200


async def test_token_once_in_the_url_becomes_a_strict_cookie(rig: Any) -> None:
    client, token, _ = rig
    r = await client.get(f"/test?token={token}", allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/test"
    cookie = r.headers["Set-Cookie"]
    assert f"{COOKIE}={token}" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert (await client.get("/test")).status == 200  # the cookie jar now carries it
    # A cookie alone does not authorise a state change without the page's own Origin.
    assert (await client.post("/rpc", json=CALL)).status == 403
    own = {"Origin": str(client.make_url("")).rstrip("/")}
    assert (await client.post("/rpc", json=CALL, headers=own)).status == 200


async def test_bridge_answers_as_the_socket_does(rig: Any) -> None:
    client, token, server = rig
    seen: list[CallRecord] = []
    server.observers.append(seen.append)
    r = await client.post("/rpc", json={**CALL, "params": {"x": "no"}}, headers=bearer(token))
    error = (await r.json())["error"]
    assert error["code"] == -32602 and error["data"]["errors"][0]["path"] == "/x"
    batch = [CALL, {**CALL, "id": 2, "method": "nope"}]
    r = await client.post("/rpc", json=batch, headers=bearer(token))
    got = await r.json()
    assert got[0]["result"] == {"x": 1} and got[1]["error"]["code"] == -32601
    r = await client.post("/rpc", data=b"x" * 2000, headers=bearer(token))
    assert (await r.json())["error"]["data"]["type"] == "message_too_large"
    assert [s.method for s in seen] == ["echo", "echo"]
    async with client.ws_connect("/rpc", headers=bearer(token)) as ws:
        await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": 7, "method": "work"}))
        notes, answer = [], None
        while answer is None:
            msg = json.loads((await ws.receive()).data)
            if "method" in msg:
                notes.append(msg["params"])
            else:
                answer = msg
    assert answer == {"jsonrpc": "2.0", "id": 7, "result": "worked"}
    assert [n["stage"] for n in notes] == ["one", "two", "done"]
    assert all(n["request_id"] == 7 for n in notes)
    (work,) = [s for s in seen if s.method == "work"]
    assert work.lifecycle and [s for s, _ in work.stages] == ["one", "two"]


def test_token_file_mode_and_group(tmp_path: Path) -> None:
    group = os.getgrouplist("root", 0)[-1]
    import grp

    name = grp.getgrgid(group).gr_name
    token = write_token(tmp_path / "http.token", name)
    st = (tmp_path / "http.token").stat()
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == group
    assert (tmp_path / "http.token").read_text() == token + "\n" and len(token) >= 40


def test_non_loopback_listen_is_refused_without_the_flag(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = {"WRENND_HTTP_LISTEN": "0.0.0.0:8080"}
    with pytest.raises(config.ConfigError, match="http_allow_remote"):
        config.load(env=env)
    assert config.load(env={**env, "WRENND_HTTP_ALLOW_REMOTE": "true"}).http_address == (
        HttpAddress(host="0.0.0.0", port=8080)
    )
    for ok in ("127.0.0.1:1", "[::1]:8080", "unix:/run/x.sock"):
        assert config.load(env={"WRENND_HTTP_LISTEN": ok}).http_address is not None
    for bad in ("localhost:80", "127.0.0.1", "[::1]", "1.2.3.4:0", "unix:rel"):
        with pytest.raises(config.ConfigError):
            config.load(env={"WRENND_HTTP_LISTEN": bad})
    # The daemon refuses to start, with the configuration error's exit status.
    monkeypatch.setenv("WRENND_HTTP_LISTEN", "192.0.2.1:8080")
    monkeypatch.setenv("WRENND_RUN_DIR", str(tmp_path))
    assert daemon.main([]) == daemon.EXIT_CONFIG


async def test_console_on_a_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "http.sock"
    settings = config.load(
        env={
            "WRENND_RUN_DIR": str(tmp_path),
            "WRENND_STATE_DIR": str(tmp_path),
            "WRENND_HTTP_LISTEN": f"unix:{sock}",
            "WRENND_SOCKET_GROUP": "no-such-group",
        }
    )
    server = make_server()
    # The sandbox service is read only by /metrics, which this test does not scrape.
    console = WebConsole(settings, server, service=None, lag=LoopLag())  # type: ignore[arg-type]
    await console.start()
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        token = settings.http_token_path.read_text().strip()
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s:
            # Any Host over a Unix socket: only local processes reach it.
            async with s.post("http://console/rpc", json=CALL, headers=bearer(token)) as r:
                assert (await r.json())["result"] == {"x": 1}
            async with s.post("http://console/rpc", json=CALL) as r:
                assert r.status == 401
            async with s.get("http://console/static/console.js", headers=bearer(token)) as r:
                assert r.status == 200 and "new WebSocket" in await r.text()
    finally:
        await console.stop()
    assert not sock.exists() and not settings.http_token_path.exists()
