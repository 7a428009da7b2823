"""The guest stand-in: a network namespace that is, to the network, a VM behind tap0.

It attaches to the sandbox's ``tap0`` (as Firecracker would) and to a TAP in
a guest namespace holding 169.254.0.21/30 with a default route via .22, and
copies Ethernet frames both ways.  A process in the guest namespace then sends
and receives exactly what a guest kernel behind the virtio-net device would.
Used by tests and by fcsim to give its simulated guest a network.

The copying runs on the event loop through ``add_reader`` on the two
non-blocking TAP fds: it never blocks, and a frame that cannot be written at
once is dropped and counted, as a NIC would under pressure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import logging
import os
from pathlib import Path

from wrennd.log import kv
from wrennd.network import links, nsutil, tap

log = logging.getLogger(__name__)

GUEST_ADDRESS = ipaddress.IPv4Interface("169.254.0.21/30")
GATEWAY = ipaddress.IPv4Address("169.254.0.22")
SANDBOX_TAP = "tap0"
MAX_FRAME = 65536
FRAMES_PER_WAKEUP = 64


@dataclasses.dataclass
class Direction:
    """Counters of one direction of the bridge."""

    frames: int = 0
    bytes: int = 0
    dropped: int = 0


@dataclasses.dataclass
class BridgeStats:
    to_guest: Direction = dataclasses.field(default_factory=Direction)
    from_guest: Direction = dataclasses.field(default_factory=Direction)


def _attach_sandbox_tap(name: str) -> int:
    """On a thread inside the sandbox namespace: attach to its existing TAP."""
    with links.iproute() as ipr:
        if links.index_of(ipr, name) is None:
            # TUNSETIFF would quietly create a new, unconnected TAP instead.
            raise FileNotFoundError(errno.ENODEV, f"no TAP {name!r} in the sandbox namespace")
    return tap.open_tap(name)


def _build_guest_ns(name: str, ifname: str, address: ipaddress.IPv4Interface, gw: str) -> int:
    """On a throwaway thread: create the guest namespace, its TAP and routes; return the fd."""
    nsutil.create_and_enter(name)
    fd = -1
    try:
        with links.iproute() as ipr:
            links.mark_and_up(ipr, "lo", links.MARK_GUEST)
            fd = tap.open_tap(ifname)
            index = links.mark_and_up(ipr, ifname)
            ipr.addr(
                "add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
            )
            ipr.route("add", dst="0.0.0.0/0", gateway=gw, oif=index)
        return fd
    except BaseException:
        if fd >= 0:
            os.close(fd)
        nsutil.remove(name)
        raise


class GuestStandIn:
    """A running bridge between ``sandbox_netns``/tap0 and a guest namespace.

    Start with ``await GuestStandIn.start(...)`` (or ``async with``); stop with
    ``await close()``, which detaches from tap0 (left in place for its owner)
    and deletes the guest namespace and its TAP.
    """

    def __init__(
        self, guest_netns: str, sandbox_fd: int, guest_fd: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.guest_netns = guest_netns
        self.stats = BridgeStats()
        self._sandbox_fd = sandbox_fd
        self._guest_fd = guest_fd
        self._loop = loop
        self._closed = False
        loop.add_reader(sandbox_fd, self._pump, sandbox_fd, guest_fd, self.stats.to_guest)
        loop.add_reader(guest_fd, self._pump, guest_fd, sandbox_fd, self.stats.from_guest)

    @classmethod
    async def start(
        cls,
        sandbox_netns: str | Path,
        guest_netns: str,
        *,
        sandbox_tap: str = SANDBOX_TAP,
        guest_ifname: str = "eth0",
        guest_address: ipaddress.IPv4Interface = GUEST_ADDRESS,
        gateway: ipaddress.IPv4Address = GATEWAY,
    ) -> GuestStandIn:
        """Create named namespace ``guest_netns`` and bridge it to ``sandbox_tap``.

        ``sandbox_netns`` is a name under /run/netns or a path to a netns file.
        Raises FileExistsError if ``guest_netns`` exists (it is never reused),
        FileNotFoundError if the sandbox namespace or its TAP does not exist.
        """
        sb_path = sandbox_netns if isinstance(sandbox_netns, Path) else None
        sb_path = sb_path or nsutil.netns_path(str(sandbox_netns))
        sandbox_fd = await nsutil.run_async(lambda: _attach_sandbox_tap(sandbox_tap), netns=sb_path)
        try:
            guest_fd = await nsutil.run_async(
                lambda: _build_guest_ns(guest_netns, guest_ifname, guest_address, str(gateway))
            )
        except BaseException:
            os.close(sandbox_fd)
            raise
        log.debug("guest stand-in up", extra=kv(sandbox=str(sb_path), guest=guest_netns))
        return cls(guest_netns, sandbox_fd, guest_fd, asyncio.get_running_loop())

    @property
    def guest_netns_path(self) -> Path:
        """The namespace file: setns(2) into it, or ``nsenter --net=`` a child."""
        return nsutil.netns_path(self.guest_netns)

    @property
    def running(self) -> bool:
        return not self._closed

    def _pump(self, src: int, dst: int, counters: Direction) -> None:
        for _ in range(FRAMES_PER_WAKEUP):
            try:
                frame = os.read(src, MAX_FRAME)
            except BlockingIOError:
                return
            except OSError as e:
                # EBADFD: the TAP was deleted under us (its namespace went away).
                log.warning("guest stand-in stops", extra=kv(error=e.strerror, fd=src))
                self._detach()
                return
            try:
                os.write(dst, frame)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.EIO, errno.EBADFD):
                    raise
                counters.dropped += 1
                continue
            counters.frames += 1
            counters.bytes += len(frame)

    def _detach(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in (self._sandbox_fd, self._guest_fd):
            self._loop.remove_reader(fd)
            os.close(fd)

    async def close(self) -> None:
        """Stop bridging, close both TAP fds and delete the guest namespace. Idempotent."""
        self._detach()
        await nsutil.run_async(lambda: nsutil.remove(self.guest_netns))

    async def __aenter__(self) -> GuestStandIn:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
