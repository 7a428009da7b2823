"""pyroute2 helpers shared by the sandbox builder and the guest stand-in.

pyroute2's synchronous IPRoute keeps its netlink socket per thread and opens
it in the namespace the thread is in at first use: each IPRoute here is made,
used and closed on one thread, right after that thread entered the namespace
it is meant for (see nsutil.run_in_thread).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

# The ifalias wrennd writes on the links it makes, and on ``lo`` of the
# namespaces it makes: what cleanup looks for before it deletes anything.
MARK_SANDBOX = "wrennd:sandbox"
MARK_GUEST = "wrennd:guest"
MARK_HOST_VETH = "wrennd:veth"


@contextmanager
def iproute() -> Iterator[Any]:
    """An IPRoute whose socket lives in the calling thread's current namespace."""
    ipr = IPRoute()
    try:
        ipr.link("get", index=1)  # opens the socket now, in this namespace (lo is index 1)
        yield ipr
    finally:
        ipr.close()


def lookup(ipr: Any, name: str) -> tuple[int, str] | None:
    """(index, alias) of link ``name``, or None: one RTM_GETLINK, not a dump of all links."""
    try:
        (link,) = ipr.link("get", ifname=name)
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return None
        raise
    return int(link["index"]), str(link.get_attr("IFLA_IFALIAS") or "")


def index_of(ipr: Any, name: str) -> int | None:
    found = lookup(ipr, name)
    return found[0] if found else None


def link_names(ipr: Any) -> dict[str, int]:
    return {name: index for name, (index, _) in links_with_alias(ipr).items()}


def links_with_alias(ipr: Any) -> dict[str, tuple[int, str]]:
    """Every link's index and alias, from one dump (no racy second lookup per link)."""
    return {
        str(link.get_attr("IFLA_IFNAME")): (
            int(link["index"]),
            str(link.get_attr("IFLA_IFALIAS") or ""),
        )
        for link in ipr.get_links()
    }


def mark_and_up(ipr: Any, name: str, mark: str | None = None) -> int:
    index = index_of(ipr, name)
    if index is None:
        raise OSError(errno.ENODEV, f"no link {name!r}")
    if mark is None:
        ipr.link("set", index=index, state="up")
    else:
        ipr.link("set", index=index, state="up", ifalias=mark)
    return index


def delete_link(ipr: Any, index: int) -> bool:
    try:
        ipr.link("del", index=index)
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return False
        raise
    return True


def link_names_here() -> dict[str, int]:
    """Links of the calling thread's namespace (opens and closes its own socket)."""
    with iproute() as ipr:
        return link_names(ipr)
