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
        ipr.link_lookup(ifname="lo")  # opens the socket now, in this namespace
        yield ipr
    finally:
        ipr.close()


def index_of(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def alias_of(ipr: Any, index: int) -> str:
    links = ipr.get_links(index)
    return str(links[0].get_attr("IFLA_IFALIAS") or "") if links else ""


def link_names(ipr: Any) -> dict[str, int]:
    return {str(link.get_attr("IFLA_IFNAME")): int(link["index"]) for link in ipr.get_links()}


def mark_and_up(ipr: Any, name: str, mark: str | None = None) -> int:
    index = index_of(ipr, name)
    if index is None:
        raise OSError(errno.ENODEV, f"no link {name!r}")
    if mark is not None:
        ipr.link("set", index=index, ifalias=mark)
    ipr.link("set", index=index, state="up")
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
