"""The network side of a sandbox's life: create, remove, and startup cleanup (DESIGN.md §7).

All netlink and nftables work runs on throwaway threads (nsutil.run_async),
never on the event loop.  Operations on one slot are serialized; different
slots proceed concurrently.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

from wrennd.log import kv
from wrennd.network import build, links, nsutil, ruleset
from wrennd.network.errors import NetworkError
from wrennd.network.nft import Nft
from wrennd.network.plan import (
    GATEWAY_INTERFACE,
    GUEST_INTERFACE,
    TAP_NAME,
    AddressPlan,
    Naming,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SandboxNetwork:
    """What the VM launcher needs to know about a slot's network."""

    slot: int
    netns: str
    host_address: ipaddress.IPv4Address
    host_veth: str
    tap: str = TAP_NAME
    guest: ipaddress.IPv4Interface = GUEST_INTERFACE
    gateway: ipaddress.IPv4Address = GATEWAY_INTERFACE.ip

    @property
    def netns_path(self) -> Path:
        return nsutil.netns_path(self.netns)

    @property
    def kernel_ip_arg(self) -> str:
        """The guest kernel's ``ip=`` boot argument for this link."""
        return f"ip={self.guest.ip}::{self.gateway}:{self.guest.netmask}::eth0:off"


@dataclasses.dataclass
class CleanupReport:
    """What cleanup_stale removed, and what it found but left alone (not wrennd's)."""

    namespaces: list[str] = dataclasses.field(default_factory=list)
    links: list[str] = dataclasses.field(default_factory=list)
    elements: list[str] = dataclasses.field(default_factory=list)
    left_alone: list[str] = dataclasses.field(default_factory=list)


class NetworkManager:
    """Per-sandbox networks on this host.

    ``host_netns`` (a namespace path) makes another namespace play the host:
    tests use it so they never touch the machine's own links, routes or
    nftables.  ``uplink`` overrides the default-route interface.
    """

    def __init__(
        self,
        plan: AddressPlan | None = None,
        naming: Naming | None = None,
        *,
        host_netns: Path | None = None,
        uplink: str | None = None,
        tap_owner: int | None = None,
    ) -> None:
        self.plan = plan or AddressPlan()
        self.naming = naming or Naming()
        self.naming.check_fits(self.plan.capacity)
        self._host_netns = host_netns
        self._uplink = uplink
        self._tap_owner = tap_owner
        self._host: build.HostContext | None = None
        self._locks: dict[int, asyncio.Lock] = {}

    @property
    def uplink(self) -> str:
        return self._ready().uplink

    def _ready(self) -> build.HostContext:
        if self._host is None:
            raise NetworkError("NetworkManager.start() has not been called")
        return self._host

    def _lock(self, slot: int) -> asyncio.Lock:
        return self._locks.setdefault(slot, asyncio.Lock())

    async def start(self) -> None:
        """Find the uplink, make sure it forwards, install the host table."""
        uplink = await nsutil.run_async(self._prepare_host, netns=self._host_netns)
        self._host = build.HostContext(self.naming, uplink, self._host_netns, self._tap_owner)
        log.info("network ready", extra=kv(uplink=uplink, table=self.naming.table))

    def _prepare_host(self) -> str:
        with links.iproute() as ipr:
            uplink = self._uplink or _default_route_interface(ipr)
            if links.index_of(ipr, uplink) is None:
                raise NetworkError(f"uplink interface {uplink!r} does not exist")
        key = f"net/ipv4/conf/{uplink}/forwarding"
        if nsutil.read_sysctl(key) != "1":
            # Replies to sandboxes arrive on the uplink: IPv4 forwarding is
            # decided per ingress interface.
            nsutil.write_sysctl(key, "1")
            log.info("enabled forwarding on the uplink", extra=kv(uplink=uplink))
        with Nft() as nft:
            nft.run(ruleset.host_table(self.naming.table, uplink))
        return uplink

    async def create(
        self, slot: int, on_namespace: Callable[[], None] | None = None
    ) -> SandboxNetwork:
        """Build slot's namespace, veth, tap0, addresses, routes and rules: all or nothing.

        Raises NameCollision if a namespace or link of that name exists (left
        alone), SetupError (after rolling back) if a step fails.  ``on_namespace()``
        is called from the building thread once the namespace exists.
        """
        host = self._ready()
        addrs = self.plan.for_slot(slot)
        async with self._lock(slot):
            job = asyncio.ensure_future(
                nsutil.run_async(lambda: build.create(host, addrs, on_namespace))
            )
            try:
                await asyncio.shield(job)
            except asyncio.CancelledError:
                # The thread finishes regardless: undo what it made.
                await asyncio.gather(job, return_exceptions=True)
                await nsutil.run_async(lambda: build.remove(host, addrs))
                raise
        return self.describe(slot)

    def describe(self, slot: int) -> SandboxNetwork:
        """What slot's network is (names and addresses), without touching it: how a
        restarted daemon takes over the network of a sandbox that kept running."""
        return SandboxNetwork(
            slot=slot,
            netns=self.naming.netns(slot),
            host_address=self.plan.for_slot(slot).host_address,
            host_veth=self.naming.host_veth(slot),
        )

    async def remove(self, slot: int) -> None:
        """Remove everything of the slot that exists; a no-op for what is gone."""
        host = self._ready()
        addrs = self.plan.for_slot(slot)
        async with self._lock(slot):
            await nsutil.run_async(lambda: build.remove(host, addrs))

    async def cleanup_stale(self, live_slots: Iterable[int]) -> CleanupReport:
        """Remove every wrennd namespace, veth and set element whose slot is not live.

        Only names of this manager's prefix that carry wrennd's mark are
        deleted; anything else found is reported in ``left_alone``.
        """
        host = self._ready()
        live = frozenset(live_slots)
        report = await nsutil.run_async(lambda: _cleanup(host, self.plan, live))
        if report.namespaces or report.links or report.elements or report.left_alone:
            log.info("stale network cleaned", extra=kv(**dataclasses.asdict(report)))
        return report

    async def uninstall(self) -> None:
        """Delete the host table (for a host that stops running sandboxes, and tests)."""
        host = self._ready()

        def drop() -> None:
            with Nft() as nft:
                if nft.list_table(ruleset.HOST_FAMILY, host.naming.table) is not None:
                    nft.run([{"delete": {"table": {"family": "inet", "name": host.naming.table}}}])

        await nsutil.run_async(drop, netns=self._host_netns)


def _default_route_interface(ipr: object) -> str:
    routes = ipr.get_default_routes(family=socket.AF_INET)  # type: ignore[attr-defined]
    best = min(routes, key=lambda r: r.get_attr("RTA_PRIORITY") or 0, default=None)
    if best is None or best.get_attr("RTA_OIF") is None:
        raise NetworkError("no IPv4 default route: cannot tell the uplink to masquerade through")
    links_ = ipr.get_links(best.get_attr("RTA_OIF"))  # type: ignore[attr-defined]
    return str(links_[0].get_attr("IFLA_IFNAME"))


def _cleanup(host: build.HostContext, plan: AddressPlan, live: frozenset[int]) -> CleanupReport:
    report = CleanupReport()
    naming = host.naming
    with build.host_fd(host) as hfd:
        if host.netns is not None:
            nsutil.enter_fd(hfd)
        # Veths first, deleted synchronously: a removed namespace takes its
        # veth pair down only later, in the kernel's own time.
        with links.iproute() as ipr, Nft() as nft:
            for name, (index, alias) in links.links_with_alias(ipr).items():
                slot = naming.slot_of_host_veth(name)
                if slot is None or slot in live:
                    continue
                if alias == links.MARK_HOST_VETH:
                    links.delete_link(ipr, index)
                    report.links.append(name)
                else:
                    report.left_alone.append(name)
            _cleanup_elements(nft, naming, plan, live, report)
        for name in nsutil.list_named():
            for slot_of, mark in (
                (naming.slot_of_netns, links.MARK_SANDBOX),
                (naming.slot_of_guest_netns, links.MARK_GUEST),
            ):
                slot = slot_of(name)
                if slot is None or slot in live:
                    continue
                outcome = build.remove_namespace(name, mark, hfd)
                (report.namespaces if outcome == "deleted" else report.left_alone).append(name)
    return report


def _cleanup_elements(
    nft: Nft, naming: Naming, plan: AddressPlan, live: frozenset[int], report: CleanupReport
) -> None:
    table = nft.list_table(ruleset.HOST_FAMILY, naming.table) or []
    for item in table:
        s = item.get("set")
        if s is None:
            continue
        for elem in s.get("elem", []):
            if s["name"] == ruleset.IFACES:
                slot = naming.slot_of_host_veth(str(elem))
                stale = slot not in live
                if stale:
                    build.remove_elements(nft, naming.table, str(elem), None)
            elif s["name"] == ruleset.ADDRS:
                addr = ipaddress.IPv4Address(str(elem))
                stale = plan.slot_of_host_address(addr) not in live
                if stale:
                    build.remove_elements(nft, naming.table, None, addr)
            else:
                continue
            if stale:
                report.elements.append(f"{s['name']}:{elem}")
