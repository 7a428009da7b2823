"""A stand-in host for tests and benchmarks: never the machine's own network.

Two namespaces: ``<prefix>host`` plays the host (its default route is its
uplink ``up0``, 198.18.0.1/24) and ``<prefix>out`` plays the outside world
at 198.18.0.2 on the other end of that veth.  A NetworkManager given
``host_netns=bed.host_path`` then builds sandboxes as it would on a real
host, while the machine's links, routes and nftables stay untouched.
198.18.0.0/15 is the benchmarking range (RFC 2544), routed nowhere else.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from wrennd.network import links, nsutil

UPLINK = "up0"
HOST_UPLINK_ADDRESS = "198.18.0.1"
OUTSIDE_ADDRESS = "198.18.0.2"


def _make_outside(name: str) -> None:
    nsutil.create_and_enter(name)
    with links.iproute() as ipr:
        links.mark_and_up(ipr, "lo")


def _make_host(name: str, outside: str) -> None:
    nsutil.create_and_enter(name)
    with links.iproute() as ipr:
        links.mark_and_up(ipr, "lo")
        fd = os.open(nsutil.netns_path(outside), os.O_RDONLY | os.O_CLOEXEC)
        try:
            ipr.link("add", ifname=UPLINK, kind="veth", peer={"ifname": "down0", "net_ns_fd": fd})
        finally:
            os.close(fd)
        index = links.mark_and_up(ipr, UPLINK)
        ipr.addr("add", index=index, address=HOST_UPLINK_ADDRESS, prefixlen=24)
        ipr.route("add", dst="0.0.0.0/0", gateway=OUTSIDE_ADDRESS, oif=index)


def _outside_end() -> None:
    with links.iproute() as ipr:
        index = links.mark_and_up(ipr, "down0")
        ipr.addr("add", index=index, address=OUTSIDE_ADDRESS, prefixlen=24)


@dataclasses.dataclass
class TestBed:
    __test__ = False  # not a pytest class
    prefix: str

    @property
    def host(self) -> str:
        return f"{self.prefix}host"

    @property
    def outside(self) -> str:
        return f"{self.prefix}out"

    @property
    def host_path(self) -> Path:
        return nsutil.netns_path(self.host)

    def build(self) -> None:
        """Create both namespaces and the uplink (blocking; a few milliseconds)."""
        try:
            nsutil.run_in_thread(lambda: _make_outside(self.outside))
            nsutil.run_in_thread(lambda: _make_host(self.host, self.outside))
            nsutil.run_in_thread(_outside_end, netns=nsutil.netns_path(self.outside))
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> None:
        """Remove every named namespace of this prefix (sandboxes included)."""
        for name in nsutil.list_named():
            if name.startswith(self.prefix):
                nsutil.remove(name)
