"""The nftables JSON commands wrennd applies: one host table, one table per sandbox namespace.

Host table ``inet <table>`` (made once at start, rules rewritten atomically):
- set ``sandbox_ifaces`` (host veth names) and set ``sandbox_addrs``
  (host-reachable addresses): a sandbox is added or removed as one batch of
  set elements, so per-sandbox changes are atomic and the rule count stays
  constant however many sandboxes run (set lookups are hashed);
- forward: no traffic between sandboxes; sandboxes reach only the uplink;
  into a sandbox only replies (the host's own connections are not forwarded);
- input: from a sandbox only replies to the host's connections;
- postrouting: masquerade sandbox addresses leaving through the uplink.

Sandbox table ``ip <table>`` inside the namespace: the 1:1 NAT between the
host-reachable address and the guest (DNAT in, SNAT out).  It dies with the
namespace.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from wrennd.network.plan import GUEST_INTERFACE, SANDBOX_VETH

Cmd = dict[str, Any]
IFACES = "sandbox_ifaces"
ADDRS = "sandbox_addrs"
HOST_FAMILY = "inet"
SANDBOX_FAMILY = "ip"


def _match(left: Any, right: Any, op: str = "==") -> Cmd:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> Cmd:
    return {"meta": {"key": key}}


def _ip(field: str) -> Cmd:
    return {"payload": {"protocol": "ip", "field": field}}


_REPLIES = _match({"ct": {"key": "state"}}, ["established", "related"], "in")
_FROM_SANDBOX = _match(_meta("iifname"), f"@{IFACES}")
_TO_SANDBOX = _match(_meta("oifname"), f"@{IFACES}")


def _chain(family: str, table: str, name: str, kind: str, hook: str, prio: int) -> Cmd:
    return {
        "chain": {
            "family": family,
            "table": table,
            "name": name,
            "type": kind,
            "hook": hook,
            "prio": prio,
            "policy": "accept",
        }
    }


def _rule(family: str, table: str, chain: str, *expr: Cmd) -> Cmd:
    return {"add": {"rule": {"family": family, "table": table, "chain": chain, "expr": list(expr)}}}


def host_table(table: str, uplink: str) -> list[Cmd]:
    """Create the host table if missing and (re)write its rules; set elements are kept."""
    f = HOST_FAMILY
    chains = [
        _chain(f, table, "forward", "filter", "forward", 0),
        _chain(f, table, "input", "filter", "input", 0),
        _chain(f, table, "postrouting", "nat", "postrouting", 100),
    ]
    cmds: list[Cmd] = [
        {"add": {"table": {"family": f, "name": table}}},
        {"add": {"set": {"family": f, "table": table, "name": IFACES, "type": "ifname"}}},
        {"add": {"set": {"family": f, "table": table, "name": ADDRS, "type": "ipv4_addr"}}},
    ]
    for c in chains:
        cmds.append({"add": c})
        cmds.append({"flush": {"chain": {k: c["chain"][k] for k in ("family", "table", "name")}}})
    drop, accept = {"drop": None}, {"accept": None}
    to_uplink = _match(_meta("oifname"), uplink)
    cmds += [
        _rule(f, table, "forward", _FROM_SANDBOX, _TO_SANDBOX, drop),
        _rule(f, table, "forward", _FROM_SANDBOX, to_uplink, accept),
        _rule(f, table, "forward", _FROM_SANDBOX, drop),
        _rule(f, table, "forward", _TO_SANDBOX, _REPLIES, accept),
        _rule(f, table, "forward", _TO_SANDBOX, drop),
        _rule(f, table, "input", _FROM_SANDBOX, _REPLIES, accept),
        _rule(f, table, "input", _FROM_SANDBOX, drop),
        _rule(
            f,
            table,
            "postrouting",
            _match(_ip("saddr"), f"@{ADDRS}"),
            to_uplink,
            {"masquerade": None},
        ),
    ]
    return cmds


def _elements(table: str, veth: str | None, address: ipaddress.IPv4Address | None) -> list[Cmd]:
    out: list[Cmd] = []
    if veth is not None:
        out.append({"family": HOST_FAMILY, "table": table, "name": IFACES, "elem": [veth]})
    if address is not None:
        out.append({"family": HOST_FAMILY, "table": table, "name": ADDRS, "elem": [str(address)]})
    return out


def add_sandbox(table: str, veth: str, address: ipaddress.IPv4Address) -> list[Cmd]:
    return [{"add": {"element": e}} for e in _elements(table, veth, address)]


def remove_sandbox(
    table: str, veth: str | None, address: ipaddress.IPv4Address | None
) -> list[Cmd]:
    """Delete the elements whether or not they are there: adding an element that
    exists is a no-op, so add-then-delete in one batch always succeeds (nft 1.0.6
    has no ``destroy``)."""
    elems = _elements(table, veth, address)
    return [{"add": {"element": e}} for e in elems] + [{"delete": {"element": e}} for e in elems]


def sandbox_table(table: str, host_address: ipaddress.IPv4Address) -> list[Cmd]:
    """The namespace's 1:1 NAT: host-reachable address <-> guest address."""
    f = SANDBOX_FAMILY
    guest = str(GUEST_INTERFACE.ip)
    on_veth_in = _match(_meta("iifname"), SANDBOX_VETH)
    on_veth_out = _match(_meta("oifname"), SANDBOX_VETH)
    return [
        {"add": {"table": {"family": f, "name": table}}},
        {"add": _chain(f, table, "prerouting", "nat", "prerouting", -100)},
        {"add": _chain(f, table, "postrouting", "nat", "postrouting", 100)},
        _rule(
            f,
            table,
            "prerouting",
            on_veth_in,
            _match(_ip("daddr"), str(host_address)),
            {"dnat": {"addr": guest}},
        ),
        _rule(
            f,
            table,
            "postrouting",
            on_veth_out,
            _match(_ip("saddr"), guest),
            {"snat": {"addr": str(host_address)}},
        ),
    ]
