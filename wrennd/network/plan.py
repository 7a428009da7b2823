"""The addressing plan and the names of a slot's resources (DESIGN.md §7).

Slot i ≥ 1 gets:
- namespace ``<prefix><i>`` holding ``tap0`` (169.254.0.22/30, the guest's gateway;
  the guest is 169.254.0.21) and ``eth0``, the sandbox end of a veth pair;
- host veth end ``<prefix><i>-h``;
- a /30 from the veth pool: host end .1, sandbox end .2 (offset 4·i);
- the host-reachable address ``host_network[i]``, routed via the veth and
  DNATed to the guest inside the namespace.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from wrennd.network.errors import SlotError

GUEST_INTERFACE = ipaddress.IPv4Interface("169.254.0.21/30")
GATEWAY_INTERFACE = ipaddress.IPv4Interface("169.254.0.22/30")
TAP_NAME = "tap0"
SANDBOX_VETH = "eth0"
IFNAMSIZ = 15
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]+")
_TABLE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclasses.dataclass(frozen=True)
class SlotAddresses:
    slot: int
    host_address: ipaddress.IPv4Address
    veth_host: ipaddress.IPv4Interface
    veth_sandbox: ipaddress.IPv4Interface


DEFAULT_HOST_NETWORK = ipaddress.IPv4Network("10.11.0.0/16")
DEFAULT_VETH_NETWORK = ipaddress.IPv4Network("10.12.0.0/16")


@dataclasses.dataclass(frozen=True)
class AddressPlan:
    host_network: ipaddress.IPv4Network = DEFAULT_HOST_NETWORK
    veth_network: ipaddress.IPv4Network = DEFAULT_VETH_NETWORK

    def __post_init__(self) -> None:
        nets = {"host_network": self.host_network, "veth_network": self.veth_network}
        if self.host_network.overlaps(self.veth_network):
            raise ValueError(f"host_network {self.host_network} overlaps {self.veth_network}")
        for key, net in nets.items():
            if net.overlaps(GUEST_INTERFACE.network):
                raise ValueError(f"{key} {net} overlaps the guest link {GUEST_INTERFACE.network}")
        if self.capacity < 1:
            raise ValueError(f"pools {self.host_network}, {self.veth_network} hold no slot")

    @property
    def capacity(self) -> int:
        """The highest slot number (slots are 1..capacity)."""
        by_host = self.host_network.num_addresses - 2  # no network, no broadcast address
        by_veth = self.veth_network.num_addresses // 4 - 1  # /30 number 0 is not used
        return min(by_host, by_veth)

    def check(self, slot: int) -> None:
        if isinstance(slot, bool) or not isinstance(slot, int) or not 1 <= slot <= self.capacity:
            raise SlotError(f"slot {slot!r} is outside 1..{self.capacity}")

    def for_slot(self, slot: int) -> SlotAddresses:
        self.check(slot)
        base = self.veth_network.network_address + 4 * slot
        return SlotAddresses(
            slot=slot,
            host_address=self.host_network.network_address + slot,
            veth_host=ipaddress.IPv4Interface(f"{base + 1}/30"),
            veth_sandbox=ipaddress.IPv4Interface(f"{base + 2}/30"),
        )

    def slot_of_host_address(self, address: ipaddress.IPv4Address) -> int | None:
        if address not in self.host_network:
            return None
        slot = int(address) - int(self.host_network.network_address)
        return slot if 1 <= slot <= self.capacity else None


@dataclasses.dataclass(frozen=True)
class Naming:
    """Names of a slot's namespaces and links, and of the nftables table.

    Tests use their own prefix and table so they never meet the daemon's.
    """

    prefix: str = "wrn-"
    table: str = "wrennd"

    def __post_init__(self) -> None:
        if not _PREFIX_RE.fullmatch(self.prefix) or self.prefix[-1].isdigit():
            raise ValueError(
                f"bad name prefix {self.prefix!r}: letters, digits, _.- not ending in a digit"
            )
        if not _TABLE_RE.fullmatch(self.table):
            raise ValueError(f"bad nftables table name {self.table!r}")
        self._patterns()  # compiled once here so a bad prefix fails early

    def _patterns(self) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
        p = re.escape(self.prefix)
        return (
            re.compile(rf"{p}([1-9][0-9]*)"),
            re.compile(rf"{p}([1-9][0-9]*)-h"),
            re.compile(rf"{p}([1-9][0-9]*)-g"),
        )

    def check_fits(self, capacity: int) -> None:
        longest = len(self.host_veth(capacity))
        if longest > IFNAMSIZ:
            raise ValueError(
                f"name prefix {self.prefix!r} is too long for {capacity} slots:"
                f" {self.host_veth(capacity)!r} exceeds {IFNAMSIZ} characters"
            )

    def netns(self, slot: int) -> str:
        return f"{self.prefix}{slot}"

    def host_veth(self, slot: int) -> str:
        return f"{self.prefix}{slot}-h"

    def guest_netns(self, slot: int) -> str:
        """The conventional name of the guest stand-in's namespace for the slot."""
        return f"{self.prefix}{slot}-g"

    def _match(self, which: int, name: str) -> int | None:
        m = self._patterns()[which].fullmatch(name)
        return int(m.group(1)) if m else None

    def slot_of_netns(self, name: str) -> int | None:
        return self._match(0, name)

    def slot_of_host_veth(self, name: str) -> int | None:
        return self._match(1, name)

    def slot_of_guest_netns(self, name: str) -> int | None:
        return self._match(2, name)
