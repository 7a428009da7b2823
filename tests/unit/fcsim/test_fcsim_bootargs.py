"""The kernel command line fcsim reads for its guest."""

from __future__ import annotations

import ipaddress

from wrennd_sim.fcsim.guest import parse_boot_args


def test_ip_hostname_init_and_wrenn_settings() -> None:
    args = parse_boot_args(
        "console=ttyS0 reboot=k panic=1 pci=off"
        " ip=169.254.0.21::169.254.0.22:255.255.255.252:box:eth0:off"
        " init=/usr/sbin/wrenn-init wrenn.dns=1.1.1.1 wrenn.agent_port=5000"
    )
    assert args.address == ipaddress.IPv4Interface("169.254.0.21/30")
    assert args.gateway == ipaddress.IPv4Address("169.254.0.22")
    assert args.hostname == "box"
    assert args.device == "eth0"
    assert args.init == "/usr/sbin/wrenn-init"
    assert args.env == {"WRENN_DNS": "1.1.1.1", "WRENN_AGENT_PORT": "5000"}


def test_defaults_without_ip() -> None:
    args = parse_boot_args("console=ttyS0 quiet")
    assert args.address is None and args.gateway is None
    assert (args.hostname, args.device, args.init, args.env) == ("fcsim", "eth0", "/sbin/init", {})


def test_network_manager_ip_argument() -> None:
    # What wrennd.network.manager.SandboxNetwork.kernel_ip_arg produces: no hostname.
    args = parse_boot_args("ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off")
    assert args.address == ipaddress.IPv4Interface("169.254.0.21/30")
    assert args.hostname == "fcsim"
