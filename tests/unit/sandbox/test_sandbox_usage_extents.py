"""The extent arithmetic of sandbox usage: bytes of a layer outside its base's extents."""

from __future__ import annotations

from wrennd.sandbox.usage import _outside


def test_outside_counts_only_uncovered_bytes() -> None:
    base = [(0, 100), (200, 50)]
    assert _outside([(0, 100)], base) == 0  # all shared with the base
    assert _outside([(50, 100)], base) == 50  # 100..150 is the layer's own
    assert _outside([(90, 200)], base) == 100 + 40  # 100..200 and 250..290
    assert _outside([(300, 10), (400, 5)], base) == 15
    assert _outside([(0, 300)], []) == 300
    assert _outside([], base) == 0
