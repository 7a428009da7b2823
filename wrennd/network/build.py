"""Build and tear down one slot's network: blocking netlink work, run on a throwaway thread.

Every function here runs on its own thread (nsutil.run_async) which starts in
the host namespace.  Sockets (pyroute2, libnftables) keep the namespace they
were opened in, so one thread can hold handles on the host and the sandbox
namespace at once; only sysctl writes need the thread itself to be inside.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from wrennd.log import kv
from wrennd.network import links, nsutil, ruleset, tap
from wrennd.network.errors import NameCollision, SetupError
from wrennd.network.nft import Nft, NftError
from wrennd.network.plan import GATEWAY_INTERFACE, SANDBOX_VETH, TAP_NAME, Naming, SlotAddresses

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class HostContext:
    """Where "the host" is: the daemon's own namespace, or one a test made."""

    naming: Naming
    uplink: str
    netns: Path | None = None
    # The uid that may attach to each TAP: a jailed (unprivileged) Firecracker's.
    tap_owner: int | None = None


@contextlib.contextmanager
def host_fd(host: HostContext) -> Iterator[int]:
    """An fd of the host namespace, to come back to after entering a sandbox's."""
    path = host.netns or nsutil.own_netns_path()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def ns_mark(name: str, host_ns: int) -> str | None:
    """The ``lo`` alias inside named namespace ``name`` (None if it is gone).

    Leaves the calling thread in the host namespace ``host_ns`` again.
    """
    try:
        nsutil.enter(nsutil.netns_path(name))
    except FileNotFoundError:
        return None
    try:
        with links.iproute() as ipr:
            found = links.lookup(ipr, "lo")
            return found[1] if found else ""
    finally:
        nsutil.enter_fd(host_ns)


def _refuse_collisions(ipr: Any, host: HostContext, slot: int, host_ns: int) -> None:
    ns = host.naming.netns(slot)
    if nsutil.exists(ns):
        mark = ns_mark(ns, host_ns)
        owner = "a stale wrennd namespace" if mark == links.MARK_SANDBOX else "not made by wrennd"
        raise NameCollision("network namespace", ns, owner)
    veth = host.naming.host_veth(slot)
    found = links.lookup(ipr, veth)
    if found is not None:
        mark = found[1]
        owner = "a stale wrennd link" if mark == links.MARK_HOST_VETH else "not made by wrennd"
        raise NameCollision("link", veth, owner)


class _Undo:
    """Rollback steps, run newest first; a failing step is logged and the rest still run."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.step = "start"
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, fn: Callable[[], object]) -> None:
        self._steps.append((what, fn))

    def run(self) -> None:
        for what, fn in reversed(self._steps):
            try:
                fn()
            except Exception as e:
                log.error("rollback step failed", extra=kv(slot=self.slot, step=what, error=e))


def _build_namespace(nipr: Any, nnft: Nft, host: HostContext, addrs: SlotAddresses) -> None:
    links.mark_and_up(nipr, "lo", links.MARK_SANDBOX)
    tap.create_persistent_tap(TAP_NAME, host.tap_owner)
    index = links.mark_and_up(nipr, TAP_NAME)
    nipr.addr("add", index=index, address=str(GATEWAY_INTERFACE.ip), prefixlen=30)
    nnft.run(ruleset.sandbox_table(host.naming.table, addrs.host_address))


def create(
    host: HostContext, addrs: SlotAddresses, on_namespace: Callable[[], None] | None = None
) -> None:
    """Make everything of the slot, or nothing: a failure rolls back what was made.
    ``on_namespace()`` is called (in this thread) as soon as the namespace exists: a
    process may be started in it while its links and rules are made."""
    slot, naming = addrs.slot, host.naming
    ns, veth = naming.netns(slot), naming.host_veth(slot)
    with host_fd(host) as hfd:
        if host.netns is not None:
            nsutil.enter_fd(hfd)
        with links.iproute() as hipr, Nft() as hnft:
            _refuse_collisions(hipr, host, slot, hfd)
            undo = _Undo(slot)
            try:
                _create_steps(host, addrs, hfd, hipr, hnft, undo, on_namespace)
            except BaseException as e:
                step = undo.step
                nsutil.enter_fd(hfd)
                undo.run()
                if isinstance(e, Exception):
                    raise SetupError(slot, step, e) from e
                raise
    log.debug("network created", extra=kv(slot=slot, netns=ns, veth=veth))


def _create_steps(
    host: HostContext,
    addrs: SlotAddresses,
    hfd: int,
    hipr: Any,
    hnft: Nft,
    undo: _Undo,
    on_namespace: Callable[[], None] | None,
) -> None:
    slot, naming = addrs.slot, host.naming
    ns, veth = naming.netns(slot), naming.host_veth(slot)
    undo.step = "create namespace"
    nsutil.create_and_enter(ns)
    undo.push("remove namespace", lambda: nsutil.remove(ns))
    if on_namespace is not None:
        on_namespace()
    nsutil.write_sysctl("net/ipv4/ip_forward", "1")
    # The plan is IPv4 only: no IPv6 on the sandbox's links, so a guest's IPv6
    # goes nowhere (and no DAD or router solicitations run for nothing).
    _disable_ipv6("default")
    _disable_ipv6("all")
    with links.iproute() as nipr, Nft() as nnft:
        undo.step = "namespace links and NAT"
        _build_namespace(nipr, nnft, host, addrs)
        undo.step = "create veth"
        nsfd = os.open(nsutil.netns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            hipr.link(
                "add", ifname=veth, kind="veth", peer={"ifname": SANDBOX_VETH, "net_ns_fd": nsfd}
            )
        finally:
            os.close(nsfd)
        undo.push("delete veth", lambda: _delete_marked_veth(hipr, veth, force=True))
        undo.step = "sandbox veth end"
        index = links.mark_and_up(nipr, SANDBOX_VETH, links.MARK_SANDBOX)
        sb = addrs.veth_sandbox
        nipr.addr("add", index=index, address=str(sb.ip), prefixlen=sb.network.prefixlen)
        nipr.route("add", dst="0.0.0.0/0", gateway=str(addrs.veth_host.ip), oif=index)
    nsutil.enter_fd(hfd)
    undo.step = "host veth end"
    index = links.mark_and_up(hipr, veth, links.MARK_HOST_VETH)
    hv = addrs.veth_host
    hipr.addr("add", index=index, address=str(hv.ip), prefixlen=hv.network.prefixlen)
    hipr.route("add", dst=f"{addrs.host_address}/32", gateway=str(sb.ip), oif=index)
    nsutil.write_sysctl(f"net/ipv4/conf/{veth}/forwarding", "1")
    _disable_ipv6(veth)
    undo.step = "host nftables elements"
    hnft.run(ruleset.add_sandbox(naming.table, veth, addrs.host_address))


def _disable_ipv6(interface: str) -> None:
    # Absent on a kernel built without IPv6: nothing to disable then.
    with contextlib.suppress(FileNotFoundError):
        nsutil.write_sysctl(f"net/ipv6/conf/{interface}/disable_ipv6", "1")


def _delete_marked_veth(ipr: Any, name: str, *, force: bool = False) -> str:
    """Delete host veth ``name`` if wrennd made it; say what happened."""
    found = links.lookup(ipr, name)
    if found is None:
        return "absent"
    index, alias = found
    if not force and alias != links.MARK_HOST_VETH:
        log.warning("link not made by wrennd left alone", extra=kv(link=name))
        return "foreign"
    links.delete_link(ipr, index)
    return "deleted"


def remove_elements(nft: Nft, table: str, veth: str | None, address: Any) -> None:
    try:
        nft.run(ruleset.remove_sandbox(table, veth, address))
    except NftError:
        if nft.list_table(ruleset.HOST_FAMILY, table) is not None:
            raise  # the table is there: a real failure


def remove_namespace(name: str, mark: str, host_ns: int) -> str:
    found = ns_mark(name, host_ns)
    if found is None:
        return "absent"
    if found != mark:
        log.warning("namespace not made by wrennd left alone", extra=kv(netns=name))
        return "foreign"
    nsutil.remove(name)
    return "deleted"


def remove(host: HostContext, addrs: SlotAddresses) -> None:
    """Remove the slot's rules, veth (and with it its routes) and namespace. Idempotent."""
    naming = host.naming
    with host_fd(host) as hfd:
        if host.netns is not None:
            nsutil.enter_fd(hfd)
        with links.iproute() as hipr, Nft() as hnft:
            remove_elements(hnft, naming.table, naming.host_veth(addrs.slot), addrs.host_address)
            _delete_marked_veth(hipr, naming.host_veth(addrs.slot))
        remove_namespace(naming.netns(addrs.slot), links.MARK_SANDBOX, hfd)
        # A simulated guest's namespace outlives a VMM that was killed (fcsim removes
        # it when it exits cleanly): left behind, it would make the slot unusable.
        remove_namespace(naming.guest_netns(addrs.slot), links.MARK_GUEST, hfd)
    log.debug("network removed", extra=kv(slot=addrs.slot))
