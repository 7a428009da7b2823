"""Firecracker's uffd handshake message: a JSON array of guest memory regions.

Firecracker sends it once, right after connecting, with the uffd attached as
SCM_RIGHTS.  Each region carries ``base_host_virt_addr``, ``size``, ``offset``
(the running sum of earlier sizes: a file offset, not a guest-physical
address) and the page size in bytes, named ``page_size`` (1.12 and later)
and/or ``page_size_kib`` (1.7 to 1.11, bytes despite the name).  Current
releases send both, with the same value.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass

PAGE_SIZE_FIELDS = ("page_size", "page_size_kib")
_INT_FIELDS = ("base_host_virt_addr", "size", "offset")


class HandshakeError(ValueError):
    """The peer's handshake cannot be served; the message says what and where."""


@dataclass(frozen=True)
class Region:
    """One guest memory region as Firecracker describes it to the handler."""

    base_host_virt_addr: int
    size: int
    offset: int
    page_size: int

    @property
    def end_offset(self) -> int:
        return self.offset + self.size

    def contains_address(self, address: int) -> bool:
        return self.base_host_virt_addr <= address < self.base_host_virt_addr + self.size


def encode(regions: Sequence[Region], page_size_fields: Sequence[str] = PAGE_SIZE_FIELDS) -> bytes:
    """The message body as Firecracker's serde_json writes it (compact, field order kept)."""
    for name in page_size_fields:
        if name not in PAGE_SIZE_FIELDS:
            raise ValueError(f"unknown page size field {name!r}: expected {PAGE_SIZE_FIELDS}")
    items = []
    for r in regions:
        item: dict[str, int] = {
            "base_host_virt_addr": r.base_host_virt_addr,
            "size": r.size,
            "offset": r.offset,
        }
        for name in page_size_fields:
            item[name] = r.page_size
        items.append(item)
    return json.dumps(items, separators=(",", ":")).encode()


def _region(index: int, item: object) -> Region:
    where = f"region {index}"
    if not isinstance(item, dict):
        raise HandshakeError(f"{where}: expected a JSON object, got {type(item).__name__}")
    values: dict[str, int] = {}
    for name in _INT_FIELDS:
        v = item.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise HandshakeError(f"{where}: {name!r} must be a non-negative integer, got {v!r}")
        values[name] = v
    sizes = {n: item[n] for n in PAGE_SIZE_FIELDS if n in item}
    if not sizes:
        raise HandshakeError(f"{where}: no page size (expected 'page_size' or 'page_size_kib')")
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v & (v - 1):
            raise HandshakeError(f"{where}: {name!r} must be a power of two in bytes, got {v!r}")
    if len(set(sizes.values())) > 1:
        raise HandshakeError(f"{where}: 'page_size' and 'page_size_kib' disagree: {sizes}")
    page_size = next(iter(sizes.values()))
    if values["size"] == 0:
        raise HandshakeError(f"{where}: size is 0")
    for name in _INT_FIELDS:
        if values[name] % page_size:
            raise HandshakeError(
                f"{where}: {name}={values[name]:#x} is not a multiple of the page size {page_size}"
            )
    return Region(page_size=page_size, **values)


def parse(data: bytes) -> list[Region]:
    """Parse and check one handshake body: well-formed, page aligned, offsets contiguous."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HandshakeError(f"handshake is not valid JSON ({len(data)} bytes): {e}") from None
    if not isinstance(doc, list) or not doc:
        raise HandshakeError("handshake must be a non-empty JSON array of regions")
    regions = [_region(i, item) for i, item in enumerate(doc)]
    expected = 0
    for i, r in enumerate(regions):
        if r.offset != expected:
            raise HandshakeError(
                f"region {i}: offset {r.offset:#x}, expected {expected:#x}"
                " (the running sum of earlier region sizes)"
            )
        expected += r.size
    ordered = sorted(regions, key=lambda r: r.base_host_virt_addr)
    for a, b in itertools.pairwise(ordered):
        if a.base_host_virt_addr + a.size > b.base_host_virt_addr:
            raise HandshakeError(
                f"regions at {a.base_host_virt_addr:#x} and {b.base_host_virt_addr:#x} overlap"
            )
    return regions
