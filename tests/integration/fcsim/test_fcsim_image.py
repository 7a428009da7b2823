"""The project's guest image boots under fcsim; its agent answers on the host-reachable address.

The network is the network manager's real per-sandbox network (namespace,
veth, tap0, routes, NAT) built inside a namespace that plays the host, with
an uplink to a namespace that plays the outside world: the test never touches
the machine's own links or nftables. fcsim runs in the sandbox namespace
like Firecracker; /health is fetched from the host namespace at the
sandbox's host-reachable address, so the request crosses the DNAT, the veth,
tap0 and the guest stand-in.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from wrennd.network import links, nsutil
from wrennd.network.manager import NetworkManager, SandboxNetwork
from wrennd.network.plan import Naming
from wrennd_sim.fcsim import harness

pytestmark = [pytest.mark.root, pytest.mark.netns]

AGENT_PORT = 49983


def _make_outside(name: str) -> None:
    nsutil.create_and_enter(name)
    with links.iproute() as ipr:
        links.mark_and_up(ipr, "lo")


def _make_host(name: str, outside: str) -> None:
    nsutil.create_and_enter(name)
    with links.iproute() as ipr:
        links.mark_and_up(ipr, "lo")
        fd = os.open(nsutil.netns_path(outside), os.O_RDONLY)
        try:
            ipr.link("add", ifname="up0", kind="veth", peer={"ifname": "down0", "net_ns_fd": fd})
        finally:
            os.close(fd)
        index = links.mark_and_up(ipr, "up0")
        ipr.addr("add", index=index, address="198.18.0.1", prefixlen=24)
        ipr.route("add", dst="0.0.0.0/0", gateway="198.18.0.2", oif=index)


@dataclass
class Host:
    name: str
    sandbox: SandboxNetwork


@pytest.fixture
async def host() -> AsyncIterator[Host]:
    tag = secrets.token_hex(2)
    prefix, host_ns, outside = f"fct{tag}-", f"fct{tag}-host", f"fct{tag}-out"
    nsutil.run_in_thread(lambda: _make_outside(outside))
    nsutil.run_in_thread(lambda: _make_host(host_ns, outside))
    manager = NetworkManager(
        naming=Naming(prefix=prefix, table=f"fct_{tag}"), host_netns=nsutil.netns_path(host_ns)
    )
    try:
        await manager.start()
        sandbox = await manager.create(1)
        yield Host(host_ns, sandbox)
        await manager.remove(1)
        await manager.uninstall()
    finally:
        for name in nsutil.list_named():
            if name.startswith(prefix):
                nsutil.remove(name)


def sparse_copy(src: Path, dst: Path) -> None:
    """The sandbox's own writable copy, as the copy storage backend makes it."""
    subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(src), str(dst)], check=True)


async def get_health(netns: str, address: str) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    with nsutil.socket_in(netns, socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setblocking(False)
        async with asyncio.timeout(2):
            await loop.sock_connect(s, (address, AGENT_PORT))
            await loop.sock_sendall(s, b"GET /health HTTP/1.0\r\nHost: guest\r\n\r\n")
            chunks = []
            while chunk := await loop.sock_recv(s, 65536):
                chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.split(b"\r\n", 1)[0].split()[1] == b"200", head
    doc: dict[str, object] = json.loads(body)
    return doc


async def test_real_image_agent_health_via_host_address(
    host: Host, guest_image: Path, tmp_path: Path
) -> None:
    rootfs = tmp_path / "rootfs.ext4"
    await asyncio.to_thread(sparse_copy, guest_image, rootfs)
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"fcsim does not run the kernel")
    sb = host.sandbox
    sim = await harness.launch(tmp_path / "vm", "image1", netns=sb.netns_path)
    try:
        c = sim.client
        await c.put_machine_config(1, 64, track_dirty_pages=True)
        await c.put_boot_source(
            str(kernel), f"console=ttyS0 reboot=k panic=1 {sb.kernel_ip_arg} wrenn.hostname=img"
        )
        await c.put_drive("rootfs", str(rootfs), is_root_device=True)
        await c.put_network_interface("eth0", sb.tap)
        await c.start()
        health: dict[str, object] = {}
        for _ in range(150):
            assert sim.proc.running, "\n".join(sim.proc.log_tail(40))
            try:
                health = await get_health(host.name, str(sb.host_address))
                break
            except (OSError, TimeoutError):
                await asyncio.sleep(0.2)
        assert health.get("status") == "ok", "\n".join(sim.proc.log_tail(40))

        await c.pause()
        await c.resume()
        assert (await get_health(host.name, str(sb.host_address)))["status"] == "ok"

        # Ctrl-Alt-Del: wrenn-init stops the agent and resets; fcsim exits with the guest.
        await c.action("SendCtrlAltDel")
        assert await asyncio.wait_for(sim.proc.wait(), 30) == 0
    finally:
        await sim.close()
    assert f"{sb.netns}-g" not in nsutil.list_named()
