"""wrenn-init applies the kernel's ip= argument itself when the kernel did not.

Debian's cloud kernel has no IP autoconfiguration (CONFIG_IP_PNP is off), so the
guest NIC is configured by PID 1.  Here its functions run in a fresh network
namespace whose eth0 is one end of a veth pair, as a real guest NIC would be.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.netns]

REPO = Path(__file__).resolve().parents[3]
CMDLINE = "console=ttyS0 ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off:192.0.2.53"

RUN = """
import importlib.machinery, importlib.util, json, sys
loader = importlib.machinery.SourceFileLoader("wrenn_init", sys.argv[1])
init = importlib.util.module_from_spec(importlib.util.spec_from_loader("wrenn_init", loader))
loader.exec_module(init)
ip = init.parse_ip_arg(sys.argv[2].split())
if ip is not None:
    init.configure_nic(ip)
    init.configure_nic(ip)  # a second time: the address is there, nothing changes
print(json.dumps({"ip": ip, "dns": init.nameservers({}, ip)}))
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"wti{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def _ip(netns: str, *args: str) -> str:
    done = subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, check=True)
    return done.stdout


def _run_init(netns: str, cmdline: str) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", netns, "/usr/bin/python3", "-c", RUN]
    argv += [str(REPO / "images" / "wrenn-init"), cmdline]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)


def test_ip_argument_configures_eth0_once(netns: str) -> None:
    _ip(netns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    _ip(netns, "link", "set", "peer0", "up")
    done = _run_init(netns, CMDLINE)
    out = json.loads(done.stdout)
    assert out["ip"]["device"] == "eth0"
    assert out["dns"] == ["192.0.2.53"]
    addr = _ip(netns, "-4", "-o", "addr", "show", "dev", "eth0")
    assert "inet 169.254.0.21/30" in addr
    assert addr.count("inet ") == 1
    assert "default via 169.254.0.22 dev eth0" in _ip(netns, "-4", "route")
    assert "UP" in _ip(netns, "-o", "link", "show", "eth0")
    assert done.stderr.count("eth0: 169.254.0.21/255.255.255.252") == 1


def test_an_address_already_there_is_left_alone(netns: str) -> None:
    # What a simulator's network (or a kernel with IP_PNP) already set up.
    _ip(netns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    _ip(netns, "addr", "add", "10.9.9.9/24", "dev", "eth0")
    _run_init(netns, CMDLINE)
    addr = _ip(netns, "-4", "-o", "addr", "show", "dev", "eth0")
    assert "10.9.9.9/24" in addr and "169.254.0.21" not in addr
    assert "default" not in _ip(netns, "-4", "route")


def test_no_device_and_no_static_address_change_nothing(netns: str) -> None:
    done = _run_init(netns, CMDLINE)
    assert "there is no eth0" in done.stderr
    _ip(netns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    for cmdline in ("ip=dhcp", "ip=off", "quiet", "ip=::169.254.0.22:255.255.255.252::eth0:off"):
        out = json.loads(_run_init(netns, cmdline).stdout)
        assert out["ip"] is None
        assert out["dns"] == ["8.8.8.8"]  # no /proc/net/pnp without IP_PNP in this namespace
    assert "inet " not in _ip(netns, "-4", "-o", "addr", "show", "dev", "eth0")
