"""Firecracker's handshake body: encoding and every refusal of the parser."""

from __future__ import annotations

import json

import pytest

from wrennd.uffd.handshake import HandshakeError, Region, encode, parse

P = 4096


def body(*items: dict[str, object]) -> bytes:
    return json.dumps(list(items)).encode()


def region(**kw: object) -> dict[str, object]:
    d: dict[str, object] = {"base_host_virt_addr": 0x10000000, "size": 4 * P, "offset": 0}
    d.update(kw)
    return d


def test_roundtrip_both_field_styles() -> None:
    regions = [Region(0x7F0000000000, 8 * P, 0, P), Region(0x7E0000000000, 4 * P, 8 * P, P)]
    for fields in (("page_size",), ("page_size_kib",), ("page_size", "page_size_kib")):
        assert parse(encode(regions, fields)) == regions
    assert encode(regions[:1]) == (
        b'[{"base_host_virt_addr":139637976727552,"size":32768,"offset":0,'
        b'"page_size":4096,"page_size_kib":4096}]'
    )
    with pytest.raises(ValueError, match="unknown page size field"):
        encode(regions, ("page_size_mib",))


def test_hugepage_size_in_bytes_in_either_field() -> None:
    huge = 2 << 20
    r = parse(body(region(size=huge, base_host_virt_addr=huge * 8, page_size_kib=huge)))
    assert r == [Region(huge * 8, huge, 0, huge)]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not valid JSON"),
        (b"[{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"{}", "non-empty JSON array"),
        (b"[]", "non-empty JSON array"),
        (b"[1]", "region 0: expected a JSON object"),
        (body(region(page_size=P, size=-1)), "'size' must be a non-negative integer"),
        (body(region(page_size=P, size="4096")), "'size' must be a non-negative integer"),
        (body(region(page_size=P, offset=True)), "'offset' must be a non-negative integer"),
        (body({"size": P, "offset": 0, "page_size": P}), "'base_host_virt_addr'"),
        (body(region()), "no page size"),
        (body(region(page_size=3000)), "power of two"),
        (body(region(page_size=0)), "power of two"),
        (body(region(page_size=P, page_size_kib=2 * P)), "disagree"),
        (body(region(page_size=P, size=0)), "size is 0"),
        (body(region(page_size=P, size=P + 1)), "not a multiple of the page size"),
        (body(region(page_size=P, base_host_virt_addr=12)), "not a multiple"),
        (body(region(page_size=P, offset=P)), r"region 0: offset 0x1000, expected 0x0"),
        (
            body(region(page_size=P), region(page_size=P, offset=0, base_host_virt_addr=1 << 40)),
            "region 1: offset 0x0, expected 0x4000",
        ),
        (
            body(
                region(page_size=P),
                region(page_size=P, offset=4 * P, base_host_virt_addr=0x10000000 + P),
            ),
            "overlap",
        ),
    ],
)
def test_malformed_bodies_are_refused(data: bytes, match: str) -> None:
    with pytest.raises(HandshakeError, match=match):
        parse(data)
